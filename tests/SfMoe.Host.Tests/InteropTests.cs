using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using SfMoe.Checkpoints;
using SfMoe.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe.Host.Tests;

/// <summary>The public API for pretrained weights: import, the trainer's LoadInto, export, and the round trip a user
/// makes (a DeiT checkpoint in, fine-tuned here, out to PyTorch, and back in).</summary>
public class InteropTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sfmoe-interop-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static string Fixture(string rel)
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "SfMoe.sln"))) dir = dir.Parent;
        if (dir is null) throw new DirectoryNotFoundException("repository root (SfMoe.sln) not found");
        return Path.Combine(dir.FullName, "tests", "fixtures", "interop", rel);
    }

    string Out(string name) => Path.Combine(_dir, name);

    /// <summary>The tiny DeiT of deit_tiny.pth as an SF-MoE model: MoE in block 1, 3 classes; both expert choices always
    /// dispatched, so evaluation is deterministic.</summary>
    const string SfMoeConfig = """
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "num_classes": 3, "distilled": true,
         "pattern": "F,S", "moe": {"num_experts": 4, "second_policy": "all"}}
        """;

    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    static Tensor Logits(Networks.Network net, Tensor x)
    {
        using var _ = no_grad();
        net.SetTraining(false);
        var o = Networks.forward(net, null, false, x);
        o.Aux.Dispose();
        return o.Logits;
    }

    [Fact]
    public void ADeitCheckpointFineTunedExportedAndReimportedGivesTheSameLogits()
    {
        // 1. Import DeiT weights into an SF-MoE model (experts copied from the dense FFN).
        var imported = Out("imported.safetensors");
        var r = Pretrained.Import(Fixture("deit_tiny.pth"), "deit", imported, new ImportOptions { ModelConfigJson = SfMoeConfig, Experts = SfMoe.Runs.ExpertInit.Copy, Seed = 3 });
        Assert.Equal(new[] { "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.weight" }, r.Report.Upcycled.Select(u => u.From));
        Assert.Equal(new[] { "head.weight", "head.bias", "head_dist.weight", "head_dist.bias" }, r.Report.Reinitialised.Select(k => k.Key));
        Assert.Null(r.Header.Dataset);
        Assert.Equal(new[] { "class0", "class1", "class2" }, r.Header.ClassNames);

        // 2. Fine-tune a few steps.
        var (net, header) = ModelFile.Load(imported);
        using var module = net.Module;
        var dd = Tensors.DdModule.cpu;
        using (var learner = new Train.Learner(net, Train.AlgorithmKind.SfMoeAlg, Optim.Kind.AdamL2, 1e-3, 0.0, 11, dd))
        {
            manual_seed(5);
            for (int step = 0; step < 3; step++)
            {
                using var x = randn(4, 3, 32, 32);
                using var y = randint(0, 3, new long[] { 4 }, ScalarType.Int64);
                var m = learner.Update(ListModule.OfArray(new[] { x }), ListModule.OfArray(new[] { y }));
                Assert.True(double.IsFinite(m.Loss));
            }
        }
        var tuned = Out("tuned.safetensors");
        ModelFile.Save(tuned, net, header with { Step = 3 });
        manual_seed(9);
        using var probe = randn(3, 3, 32, 32);
        using var before = Logits(net, probe);
        using (var w0 = Logits(ModelFile.Load(imported).Net, probe))
            Assert.False(w0.allclose(before), "fine-tuning changed the model");

        // 3. Export both ways, 4. import again: the same logits, exactly.
        Pretrained.Export(tuned, "pytorch", Out("tuned.pth"));
        Pretrained.Export(tuned, "timm", Out("tuned_timm.safetensors"));
        var again1 = Pretrained.Import(Out("tuned.pth"), "timm", Out("again1.safetensors"), new ImportOptions { ModelConfigJson = SfMoeConfig });
        var again2 = Pretrained.Import(Out("tuned_timm.safetensors"), "timm", Out("again2.safetensors")); // config from the export's metadata
        Assert.Equal("the checkpoint's config", again2.Model);
        foreach (var again in new[] { again1, again2 })
        {
            Assert.Empty(again.Report.Reinitialised);
            Assert.Empty(again.Report.Initialised);
            Assert.Empty(again.Report.Ignored);
            var (net2, _) = ModelFile.Load(again.OutputPath);
            using var m2 = net2.Module;
            using var after = Logits(net2, probe);
            Assert.True(Same(after, before), "bit-identical logits after export and re-import");
        }
    }

    [Fact]
    public void LoadIntoFillsANetworkBuiltForTraining()
    {
        var net = Networks.build(ModelSpec.resolve(ModelSpec.ofJson(SfMoeConfig)), Tensors.DdModule.cpu, 1, 0.0);
        using var module = net.Module;
        var before = net.Module.state_dict()["blocks.1.mlp.experts.w1"].clone();
        var report = Pretrained.LoadInto(net, Fixture("deit_tiny.pth"), "deit");
        Assert.Equal("imagenet", report.NormalizationName);
        Assert.Contains(report.Initialised, k => k.Key == "blocks.1.mlp.experts.w1" && k.Reason.Contains("--experts random"));
        Assert.True(Same(before, net.Module.state_dict()["blocks.1.mlp.experts.w1"]), "SF-MoE default: experts keep the network's init");
        Assert.Contains(report.Lines(), l => l.StartsWith("ignored: 4"));
        var ex = Assert.ThrowsAny<SfMoeException>(() => Pretrained.LoadInto(net, Fixture("unsafe/posix_system.pth"), "deit"));
        Assert.Contains("refused global posix.system in posix_system.pth", ex.Message);
        ex = Assert.ThrowsAny<SfMoeException>(() => Pretrained.LoadInto(net, Fixture("deit_tiny.pth"), "keras"));
        Assert.Contains("unknown pretrained format keras", ex.Message);
        ex = Assert.ThrowsAny<SfMoeException>(() => Pretrained.ParseExperts("clone"));
        Assert.Contains("experts must be copy or random, got clone", ex.Message);
    }

    [Fact]
    public void AugregHybridRecordsTheNormalizationItsWeightsExpect()
    {
        const string cfg = """
            {"img_size": 32, "patch_size": 1, "embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0, "num_classes": 5, "pattern": "F,S",
             "moe": {"num_experts": 6}, "hybrid_backbone": {"layers": [1, 1], "channels": [64, 128], "stem_channels": 16, "num_groups": 8}}
            """;
        var r = Pretrained.Import(Fixture("augreg_hybrid_tiny.npz"), "augreg", Out("h.safetensors"), new ImportOptions { ModelConfigJson = cfg, Experts = SfMoe.Runs.ExpertInit.Copy });
        Assert.Equal(new[] { 0.5f, 0.5f, 0.5f }, r.Header.Mean);
        Assert.Equal(new[] { 0.5f, 0.5f, 0.5f }, r.Header.Std);
        Assert.Contains(r.Report.Ignored, k => k.Key == "blocks.1.mlp.fc1.bias");   // bias-free SF-MoE experts
        var (net, h) = ModelFile.Load(Out("h.safetensors"));
        net.Module.Dispose();
        Assert.Equal("vit", h.Backbone);
        var asAuthors = Pretrained.Import(Fixture("augreg_hybrid_tiny.npz"), "augreg", Out("h2.safetensors"),
            new ImportOptions { ModelConfigJson = cfg, Normalization = "imagenet" });
        Assert.Equal(new[] { 0.485f, 0.456f, 0.406f }, asAuthors.Header.Mean);
        Assert.Contains(asAuthors.Report.Notes, n => n.Contains("although these weights expect inception"));
    }

    [Fact]
    public void ResNet50ExportsUnderTorchvisionNamesAndComesBack()
    {
        var net = Networks.build(ModelSpec.resolve(ModelSpec.Create(ModelSpec.Source.NewNamed("resnet50"), null, 4, 224, null)), Tensors.DdModule.cpu, 2, 0.0);
        using var module = net.Module;
        var header = new ModelHeader("resnet50", null, 4, 3, 224, new[] { "a", "b", "c", "d" }, null, 0, "ERM", "{}",
                                     new[] { 0.485f, 0.456f, 0.406f }, new[] { 0.229f, 0.224f, 0.225f });
        ModelFile.Save(Out("erm.safetensors"), net, header);
        Pretrained.Export(Out("erm.safetensors"), "pytorch", Out("erm.pth"));
        var sd = Core.Export.stateDict(net).Select(t => t.Item1).ToList();
        Assert.Contains("layer4.2.bn3.running_var", sd);
        Assert.Contains("fc.weight", sd);
        Assert.DoesNotContain(sd, k => k.StartsWith("featurizer") || k.StartsWith("classifier"));
        var r = Pretrained.Import(Out("erm.pth"), "torchvision", Out("back.safetensors"));
        Assert.Equal("resnet50", r.Header.Backbone);
        Assert.Equal(4, r.Header.NumClasses);
        Assert.Empty(r.Report.Reinitialised);
        var (back, _) = ModelFile.Load(Out("back.safetensors"));
        using var m2 = back.Module;
        manual_seed(1);
        using var x = randn(1, 3, 64, 64);
        using var a = Logits(net, x);
        using var b = Logits(back, x);
        Assert.True(Same(a, b));
    }

    [Fact]
    public void DomainBedCheckpointsNameTheirAlgorithmAndDataset()
    {
        const string cfg = """
            {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "num_classes": 5, "distilled": true,
             "pattern": "F,S", "moe": {"second_policy": "all"}}
            """;
        var r = Pretrained.Import(Fixture("sfmoe_dg_tiny.pkl"), "sfmoe-dg", Out("dg.safetensors"), new ImportOptions { ModelConfigJson = cfg });
        Assert.Equal("SFMOE", r.Header.Algorithm);
        Assert.Equal("PACS", r.Header.Dataset);
        Assert.Contains(r.Report.Info, k => k.Key == "model_hparams");
        // Without a config the file's algorithm picks the authors' model, which these tiny weights do not fit.
        var ex = Assert.ThrowsAny<SfMoeException>(() => Pretrained.Import(Fixture("sfmoe_dg_tiny.pkl"), "sfmoe-dg", Out("dg2.safetensors")));
        Assert.Contains("shape mismatch: patch_embed.proj.weight: checkpoint [32, 3, 8, 8], model [384, 3, 16, 16]", ex.Message);
        Assert.False(File.Exists(Out("dg2.safetensors")));
    }
}
