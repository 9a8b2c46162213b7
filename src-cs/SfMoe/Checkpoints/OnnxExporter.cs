using System.Text.Json;
using Microsoft.FSharp.Core;
using SfMoe.Core;
using CoreOnnx = SfMoe.Core.Onnx.OnnxExport;

namespace SfMoe.Checkpoints;

/// <summary>Settings of an ONNX export (<see cref="OnnxExporter.Export"/>).</summary>
public sealed class OnnxExportOptions
{
    /// <summary>ONNX opset of the default domain, 17 (the default) to 21.</summary>
    public int Opset { get; set; } = CoreOnnx.minOpset;

    /// <summary>A fixed batch size; null (the default) exports a dynamic batch dimension named "batch".</summary>
    public int? BatchSize { get; set; }

    /// <summary>
    /// Serve SF-MoE's random second-expert policy as the threshold policy with the same threshold, for deterministic
    /// outputs. Otherwise the graph draws with RandomUniformLike, as the authors' eval does, and is stochastic.
    /// </summary>
    public bool RandomPolicyAsThreshold { get; set; }

    /// <summary>Add outputs routing.{i}.index (B, N, k) int64 and routing.{i}.kept (B, N, k) bool per sparse block.</summary>
    public bool RoutingOutputs { get; set; }
}

/// <summary>What an ONNX export wrote.</summary>
/// <param name="OutputPath">The .onnx file.</param>
/// <param name="Bytes">Its size.</param>
/// <param name="Opset">Its opset.</param>
/// <param name="BatchSize">Its fixed batch size; null when dynamic.</param>
/// <param name="Stochastic">Whether it draws random numbers (the random second-expert policy).</param>
/// <param name="Metadata">The metadata written into it (preprocessing, classes, model config).</param>
public sealed record OnnxExportResult(string OutputPath, long Bytes, int Opset, int? BatchSize, bool Stochastic, IReadOnlyDictionary<string, string> Metadata);

/// <summary>
/// A model file to an ONNX model for ONNX Runtime: the whole eval-mode network as ONNX operators (input "images"
/// (B, C, H, W) float32, resized and normalised; output "logits" (B, K)), with the preprocessing (size, mean, std,
/// resize), the class names and the model config in its metadata. SfMoe.Onnx loads it without TorchSharp.
/// </summary>
public static class OnnxExporter
{
    static OnnxExporter() { Native.ensure(); }

    /// <summary>The resize the preprocessing uses (Pillow's antialiased bilinear, as <c>sfmoe predict</c>).</summary>
    public const string Resize = "pil-bilinear";

    /// <summary>Exports a model file (.safetensors written by training or import).</summary>
    /// <exception cref="SfMoeException">Unreadable model file, options out of range, a model ONNX cannot hold, or an
    /// unwritable output.</exception>
    public static OnnxExportResult Export(string checkpointPath, string outputPath, OnnxExportOptions? options = null)
    {
        var (net, header) = ModelFile.Load(checkpointPath);
        using var _ = net.Module;
        return Write(outputPath, net, header, options);
    }

    /// <summary>Exports a network described by a model header (a loaded model file, or a registry model for benchmarks).</summary>
    internal static OnnxExportResult Write(string outputPath, Networks.Network net, ModelHeader header, OnnxExportOptions? options = null)
    {
        var o = options ?? new OnnxExportOptions();
        var arch = ModelFile.Architecture(header);
        var meta = Metadata(header);
        var coreOptions = new CoreOnnx.Options(
            o.Opset, o.BatchSize is int b ? FSharpOption<int>.Some(b) : null, o.RandomPolicyAsThreshold, o.RoutingOutputs);
        var metaList = Microsoft.FSharp.Collections.ListModule.OfSeq(meta.Select(kv => Tuple.Create(kv.Key, kv.Value)));
        AtomicFile.Write(outputPath, s => CoreOnnx.write(coreOptions, arch, net, metaList, s));
        var stochastic = CoreOnnx.isStochastic(coreOptions, arch);
        meta["format"] = CoreOnnx.format;
        meta["stochastic"] = stochastic ? "true" : "false";
        return new OnnxExportResult(outputPath, new FileInfo(outputPath).Length, o.Opset, o.BatchSize, stochastic, meta);
    }

    /// <summary>The metadata of a model file's export: what a runtime needs to preprocess images and name classes.</summary>
    internal static Dictionary<string, string> Metadata(ModelHeader h)
    {
        // The preprocessing TrainedModel.Predict applies: ImageNet-style normalisation for RGB models, pixels / 255
        // (mean 0, std 1) otherwise; both are (x / 255 - mean) / std after the resize.
        var rgb = h.InChannels == 3;
        var mean = rgb ? h.Mean : new float[h.InChannels];
        var std = rgb ? h.Std : Enumerable.Repeat(1f, h.InChannels).ToArray();
        var m = new Dictionary<string, string>
        {
            ["backbone"] = h.Backbone,
            ["num_classes"] = h.NumClasses.ToString(),
            ["in_chans"] = h.InChannels.ToString(),
            ["img_size"] = h.ImageSize.ToString(),
            ["class_names"] = JsonSerializer.Serialize(h.ClassNames),
            ["mean"] = JsonSerializer.Serialize(mean),
            ["std"] = JsonSerializer.Serialize(std),
            ["resize"] = Resize,
            ["input"] = CoreOnnx.inputName,
            ["output"] = CoreOnnx.outputName,
            ["algorithm"] = h.Algorithm,
            ["step"] = h.Step.ToString(),
        };
        if (h.ModelConfigJson is not null) m["model_config"] = h.ModelConfigJson;
        if (h.Dataset is not null) m["dataset"] = h.Dataset;
        return m;
    }
}
