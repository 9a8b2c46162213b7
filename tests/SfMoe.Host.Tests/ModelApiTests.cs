using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe.Host.Tests;

/// <summary>C# calls the F# core only through the host's public API.</summary>
public class ModelApiTests
{
    [Fact]
    public void CreatesARegistryModelWithAPatternAndRunsIt()
    {
        using var model = SfMoeModel.Create("vit_test_patch8_32", new ModelOptions { NumClasses = 7, Seed = 1 });
        Assert.Equal("Fx4", model.Pattern);
        Assert.Equal(7, model.NumClasses);
        using var x = randn(3, 3, 32, 32);
        using var logits = model.Forward(x);
        Assert.Equal(new long[] { 3, 7 }, logits.shape);
    }

    [Fact]
    public void LayoutListsEveryBlockAndAddsUpToTheParameterCount()
    {
        using var model = SfMoeModel.Create("deit_test_distilled_patch8_32", new ModelOptions { Seed = 1 });
        var layout = model.Layout;
        Assert.Equal(new[] { "embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "norm", "head" }, layout.Select(b => b.Name));
        Assert.Equal(model.ParameterCount, layout.Sum(b => b.Parameters));
        Assert.Equal(model.ParameterCount, model.Module.parameters().Sum(p => p.numel()));
    }

    [Fact]
    public void RunReturnsAttentionMapsWhenAsked()
    {
        using var model = SfMoeModel.Create("vit_test_patch8_32", new ModelOptions { Seed = 2 });
        model.Eval();
        using var x = randn(2, 3, 32, 32);
        using var output = model.Run(x, returnAttention: true);
        Assert.Equal(4, output.Attention.Count);
        Assert.Equal(new long[] { 2, 4, 17, 17 }, output.Attention[0].shape);
        using var rowSums = output.Attention[0].sum(-1);
        Assert.True(rowSums.allclose(ones_like(rowSums), rtol: 1e-5, atol: 1e-5));
        using var again = model.Forward(x);
        Assert.True(again.allclose(output.Logits, rtol: 1e-5, atol: 1e-6));
    }

    [Fact]
    public void SameSeedGivesTheSameModel()
    {
        using var a = SfMoeModel.Create("vit_test_patch8_32", new ModelOptions { Seed = 5 });
        using var b = SfMoeModel.Create("vit_test_patch8_32", new ModelOptions { Seed = 5 });
        var sa = a.Module.state_dict();
        var sb = b.Module.state_dict();
        foreach (var (k, t) in sa) Assert.True(t.eq(sb[k]).all().item<bool>(), k);
    }

    [Fact]
    public void UnknownModelSuggestsNearNames()
    {
        var e = Assert.ThrowsAny<SfMoeException>(() => SfMoeModel.Create("vit_tiny_patch16_24"));
        Assert.Contains("unknown model vit_tiny_patch16_24; did you mean vit_tiny_patch16_224", e.Message);
    }

    [Fact]
    public void BadPatternOptionNamesTheColumn()
    {
        var e = Assert.ThrowsAny<SfMoeException>(() => SfMoeModel.Create("vit_test_patch8_32", new ModelOptions { Pattern = "[F,F]x" }));
        Assert.Equal("pattern \"[F,F]x\" at column 6: expected a repeat count", e.Message);
        e = Assert.ThrowsAny<SfMoeException>(() => SfMoeModel.Create("vit_test_patch8_32", new ModelOptions { Pattern = "Fx6" }));
        Assert.Equal("pattern \"Fx6\" has 6 blocks but depth is 4", e.Message);
    }

    [Fact]
    public void WrongInputShapeIsAClearError()
    {
        using var model = SfMoeModel.Create("vit_test_patch8_32", new ModelOptions { Seed = 1 });
        using var x = randn(2, 1, 32, 32);
        var e = Assert.ThrowsAny<SfMoeException>(() => model.Forward(x));
        Assert.Equal("expected 3 channels (in_chans), got 1 in input of shape [2, 1, 32, 32]", e.Message);
    }

    [Fact]
    public void UnavailableDeviceIsAClearError()
    {
        if (cuda.is_available()) return;
        var e = Assert.ThrowsAny<SfMoeException>(() => SfMoeModel.Create("vit_test_patch8_32", new ModelOptions { Device = "cuda" }));
        Assert.Contains("CUDA is not available", e.Message);
    }

    [Fact]
    public void PatternsParseAndListPresets()
    {
        var p = Patterns.Parse("[S,F]x6");
        Assert.Equal("[S,F]x6", p.Canonical);
        Assert.Equal(12, p.Depth);
        Assert.Equal(Enumerable.Range(0, 12).Select(i => i % 2 == 0 ? "S" : "F"), p.Blocks);
        Assert.Equal("Fx5,S,Fx5,S", Patterns.Parse("sfmoe-dg", 12).Canonical);
        Assert.Contains(Patterns.Presets, t => t.Name == "gmoe" && t.Pattern == "Fx8,[S,F]x2");
        var e = Assert.ThrowsAny<SfMoeException>(() => Patterns.Parse("S,F", 3));
        Assert.Equal("pattern \"S,F\" has 2 blocks but depth is 3", e.Message);
    }

    [Fact]
    public void RoutingRecordsOfSparseBlocksAreAvailable()
    {
        using var model = SfMoeModel.Create("sfmoe_test_patch8_32", new ModelOptions { Seed = 3 });
        model.Eval();
        using var x = randn(2, 3, 32, 32);
        using var g = new Generator(5);
        using var o = model.Run(x, returnRouting: true, generator: g);
        Assert.Equal(new[] { 1, 3 }, o.Routing.Select(r => r.Block));
        var r = o.Routing[0];
        Assert.Equal(new long[] { 2, 18, 2 }, r.Index.shape);
        Assert.Equal(new long[] { 4 }, r.Load.shape);
        Assert.Equal(r.Kept.sum().item<long>(), r.Load.sum().item<long>());
        Assert.Equal(o.Routing.Sum(rr => 0.01 * rr.BalanceLoss), o.AuxLoss.item<float>(), 5);
    }

    [Fact]
    public void ModelsCanBeStatedAsJson()
    {
        const string json = """{"model": "sfmoe_test_patch8_32", "num_classes": 3, "pattern": "S,F,S,F", "moe": {"num_experts": 3, "top_k": 1}}""";
        using var model = SfMoeModel.FromConfigJson(json, seed: 1);
        Assert.Equal("S,F,S,F", model.Pattern);
        Assert.Equal(3, model.NumClasses);
        using var again = SfMoeModel.FromConfigJson(model.ConfigJsonText, seed: 1);
        Assert.Equal(model.ParameterCount, again.ParameterCount);
        var e = Assert.ThrowsAny<SfMoeException>(() => SfMoeModel.FromConfigJson("""{"model": "sfmoe_test_patch8_32", "moe": {"top_k": 5}}"""));
        Assert.Equal("moe.top_k must be 1 or 2, got 5", e.Message);
        e = Assert.ThrowsAny<SfMoeException>(() => SfMoeModel.FromConfigJson("""{"model": "sfmoe_test_patch8_32", "moe": {"router": "hash"}}"""));
        Assert.Equal("moe.router must be \"linear\" or \"cosine\", got \"hash\"", e.Message);
    }

    [Fact]
    public void ForwardDoesNotLeakTensors()
    {
        using var model = SfMoeModel.Create("vit_test_patch8_32", new ModelOptions { Seed = 1 });
        model.Eval();
        using var x = randn(2, 3, 32, 32);
        using var _ = no_grad();
        var stats = DisposeScopeManager.Statistics;
        stats.Reset();
        for (int i = 0; i < 20; i++) model.Forward(x).Dispose();
        Assert.Equal(0, stats.ThreadTotalLiveCount);
    }
}
