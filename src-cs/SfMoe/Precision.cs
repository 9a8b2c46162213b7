using System.Runtime.InteropServices;
using TorchSharp;
using SfMoe.Core;
using static TorchSharp.torch;

namespace SfMoe;

/// <summary>Numeric precision of training and evaluation.</summary>
public enum Precision
{
    /// <summary>float32 everywhere; TF32 off on CUDA. The default.</summary>
    Fp32,
    /// <summary>float32 tensors; on CUDA, matmuls and convolutions use TF32 tensor cores. Changes nothing on a CPU.</summary>
    Tf32,
    /// <summary>Mixed precision: bfloat16 matmuls, convolutions and attention; float32 master weights, optimizer
    /// state, norms, router, balance losses and loss.</summary>
    Bf16,
}

/// <summary>Names of the precisions (as in results.jsonl's args and on the command line) and their core values.</summary>
internal static class Precisions
{
    /// <summary>"fp32", "tf32", "bf16": the core's names (one table, Tensors.Precision.all).</summary>
    public static string Name(Precision p) => Tensors.PrecisionModule.name(ToCore(p));

    /// <summary>The precision of a name, or null for an unknown one.</summary>
    public static Precision? TryParse(string? name) => name switch
    {
        "fp32" => Precision.Fp32,
        "tf32" => Precision.Tf32,
        "bf16" => Precision.Bf16,
        _ => null,
    };

    /// <summary>The core's precision.</summary>
    public static Tensors.Precision ToCore(Precision p) => p switch
    {
        Precision.Fp32 => Tensors.Precision.Fp32,
        Precision.Tf32 => Tensors.Precision.Tf32,
        Precision.Bf16 => Tensors.Precision.Bf16,
        _ => throw new ConfigException($"unknown precision {p}: expected Fp32, Tf32 or Bf16"),
    };
}

/// <summary>
/// libtorch's deterministic algorithms (<c>torch.use_deterministic_algorithms</c>, process-wide), for the duration of
/// a run. TorchSharp 0.107 declares that function but does not implement it, so this calls libtorch's
/// <c>at::globalContext().setDeterministicAlgorithms</c> directly (Linux x64 symbol names). On CUDA libtorch then picks
/// deterministic kernels where its default ones accumulate with atomics (index_add, scatter_add, the backward of the
/// gathers through index_put with accumulate) and throws for an op that has none; cuBLAS needs
/// <c>CUBLAS_WORKSPACE_CONFIG</c> set before its first use for reproducible matmuls, so it is set (":4096:8") when unset.
/// The kernels SfMoe uses on a CPU are deterministic already: there the flag changes no result.
/// </summary>
internal sealed class Determinism : IDisposable
{
    [DllImport("libtorch_cpu", EntryPoint = "_ZN2at13globalContextEv")]
    static extern IntPtr GlobalContext();

    [DllImport("libtorch_cpu", EntryPoint = "_ZN2at7Context26setDeterministicAlgorithmsEbb")]
    static extern void SetDeterministicAlgorithms(IntPtr context, [MarshalAs(UnmanagedType.I1)] bool on, [MarshalAs(UnmanagedType.I1)] bool warnOnly);

    [DllImport("libtorch_cpu", EntryPoint = "_ZNK2at7Context23deterministicAlgorithmsEv")]
    [return: MarshalAs(UnmanagedType.I1)]
    static extern bool DeterministicAlgorithms(IntPtr context);

    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv(string name, string value, int overwrite);

    static T Call<T>(Func<T> f)
    {
        try { return f(); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            throw new ConfigException($"TrainOptions.Deterministic: libtorch's deterministic algorithms cannot be set on this platform ({e.Message})");
        }
    }

    /// <summary>Whether libtorch's deterministic algorithms are on (process-wide).</summary>
    public static bool Enabled => Call(() => DeterministicAlgorithms(GlobalContext()));

    /// <summary>Sets libtorch's flag (process-wide).</summary>
    public static void Set(bool on) => Call(() => { SetDeterministicAlgorithms(GlobalContext(), on, false); return 0; });

    readonly bool _previous;
    Determinism(bool previous) { _previous = previous; }

    /// <summary>Switches deterministic algorithms on for a run on <paramref name="device"/> until disposed (then back to
    /// what they were), and says what that means there.</summary>
    public static (Determinism Scope, string Note) Begin(Device device)
    {
        bool cuda = device.type == DeviceType.CUDA;
        if (cuda && Environment.GetEnvironmentVariable("CUBLAS_WORKSPACE_CONFIG") is null)
        {
            Environment.SetEnvironmentVariable("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
            if (OperatingSystem.IsLinux())
                try { SetEnv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", 0); } catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        }
        var scope = new Determinism(Enabled);
        Set(true);
        return (scope, cuda
            ? "deterministic: libtorch's deterministic algorithms on (no atomics in index_add/scatter_add and the gathers' backward; math attention, patch embedding as a matmul; slower)"
            : $"deterministic: libtorch's deterministic algorithms on; the kernels SfMoe uses on {device} are deterministic already, so no result changes");
    }

    /// <summary>Restores the flag as it was before <see cref="Begin"/>.</summary>
    public void Dispose() => Set(_previous);
}
