using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace SfMoe.Host.Tests;

/// <summary>
/// The same model on the CPU and on the GPU: built from one seed (weights are initialised on the CPU and moved), run on
/// one input with the same draws (a CPU generator; the core copies its draws to the device), in fp32 (libtorch leaves
/// TF32 off): logits, aux loss, routing and every parameter's gradient agree. Skipped where CUDA is not available;
/// <c>SFMOE_PARITY_DEVICE</c> picks the device to compare with the CPU (default cuda; <c>cpu</c> runs the comparison
/// here, CPU against CPU). scripts/gpu-check.sh runs it on GPU machines that have .NET.
/// </summary>
public class CudaParityTests(ITestOutputHelper output)
{
    static string Target => Environment.GetEnvironmentVariable("SFMOE_PARITY_DEVICE") is { Length: > 0 } d ? d : "cuda";

    static double RelErr(Tensor a, Tensor b)
    {
        using var _ = NewDisposeScope();
        var x = a.detach().to(CPU).to(ScalarType.Float64);
        var y = b.detach().to(CPU).to(ScalarType.Float64);
        return (x - y).abs().max().item<double>() / Math.Max(y.abs().max().item<double>(), 1e-12);
    }

    static double Agree(Tensor a, Tensor b)
    {
        using var _ = NewDisposeScope();
        return a.to(CPU).eq(b.to(CPU)).to(ScalarType.Float64).mean().item<double>();
    }

    [SkippableTheory]
    [InlineData("sfmoe_test_patch8_32", 4)]
    [InlineData("gmoe_test_patch8_32", 4)]
    [InlineData("sfmoe_small_patch16_224", 2)]
    [InlineData("gmoe_small_patch16_224", 2)]
    public void LogitsAuxRoutingAndGradientsMatchTheCpu(string name, int batch)
    {
        var target = Target;
        Skip.If(target.StartsWith("cuda", StringComparison.Ordinal) && !cuda.is_available(),
            "no CUDA device here (SFMOE_PARITY_DEVICE=cpu runs the comparison CPU against CPU)");
        Skip.If(target == "cpu" && name.Contains("small"), "CPU against CPU: the tiny models are enough");
        using var cpuModel = SfMoeModel.Create(name, new ModelOptions { Seed = 11, Device = "cpu" });
        using var devModel = SfMoeModel.Create(name, new ModelOptions { Seed = 11, Device = target });
        cpuModel.Eval();
        devModel.Eval();
        int size = cpuModel.ImageSize;
        using var xg = new Generator(5);
        using var x = randn([batch, 3, size, size], generator: xg);
        using var xd = x.to(target);
        using var g1 = new Generator(7);
        using var g2 = new Generator(7);
        using var a = cpuModel.Run(x, returnRouting: true, generator: g1);
        using var b = devModel.Run(xd, returnRouting: true, generator: g2);
        Assert.Equal(target.Split(':')[0], b.Logits.device.type.ToString().ToLowerInvariant());

        double logits = RelErr(b.Logits, a.Logits);
        double aux = Math.Abs(b.AuxLoss.to(CPU).item<float>() - a.AuxLoss.to(CPU).item<float>());
        Assert.Equal(a.Routing.Count, b.Routing.Count);
        double index = a.Routing.Zip(b.Routing).Min(p => Agree(p.Second.Index, p.First.Index));
        double kept = a.Routing.Zip(b.Routing).Min(p => Agree(p.Second.Kept, p.First.Kept));

        // Gradients of one loss through the whole model (eval mode: no dropout, eval capacity).
        using (var la = a.Logits.square().mean() + a.AuxLoss) la.backward();
        using (var lb = b.Logits.square().mean() + b.AuxLoss) lb.backward();
        var pa = cpuModel.Module.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var pb = devModel.Module.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.Equal(pa.Keys.Order(), pb.Keys.Order());
        var worst = pa.Where(p => p.Value.grad is not null)
            .Select(p => (p.Key, Err: RelErr(pb[p.Key].grad!, p.Value.grad!)))
            .MaxBy(t => t.Err);
        output.WriteLine($"{name} on {target} vs cpu: logits {logits:E2}, aux {aux:E2}, routing {index:F4}, kept {kept:F4}, worst grad {worst.Err:E2} ({worst.Key})");

        Assert.True(logits < 1e-4, $"logits differ: {logits:E2} relative");
        Assert.True(aux < 1e-5, $"aux loss differs by {aux:E2}");
        Assert.True(index >= 0.99 && kept >= 0.99, $"routing agrees on {index:P2} of choices, kept flags on {kept:P2}");
        Assert.True(worst.Err < 1e-3, $"gradient of {worst.Key} differs: {worst.Err:E2} relative");
    }
}
