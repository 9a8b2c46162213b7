namespace SfMoe.Onnx;

/// <summary>Where ONNX Runtime runs the model.</summary>
public enum OnnxProvider
{
    /// <summary>The CPU (every ONNX Runtime package).</summary>
    Cpu,
    /// <summary>NVIDIA GPUs: needs an ONNX Runtime build with CUDA (Microsoft.ML.OnnxRuntime.Gpu) in place of the CPU one.</summary>
    Cuda,
}

/// <summary>Session settings of <see cref="OnnxModel.Load"/>.</summary>
public sealed class OnnxModelOptions
{
    /// <summary>Threads of one operator (intra-op); null: one per logical core (<see cref="Environment.ProcessorCount"/>,
    /// which respects container CPU limits).</summary>
    public int? Threads { get; set; }

    /// <summary>The execution provider (CPU by default).</summary>
    public OnnxProvider Provider { get; set; } = OnnxProvider.Cpu;

    /// <summary>The CUDA device with <see cref="OnnxProvider.Cuda"/>.</summary>
    public int CudaDevice { get; set; }

    /// <summary>Images per ONNX Runtime call in batch prediction when the model's batch is dynamic (default 32).</summary>
    public int BatchSize { get; set; } = 32;
}
