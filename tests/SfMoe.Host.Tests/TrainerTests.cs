using System.Text.Json;
using SfMoe.Checkpoints;
using SfMoe.Core;
using SfMoe.Data;
using SfMoe.Imaging;
using SfMoe.Runs;
using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe.Host.Tests;

/// <summary>A tiny in-memory multi-domain dataset: the label is which half of the image is bright; each environment
/// tints the images differently.</summary>
internal sealed class ToyDataset : IMultiDomainDataset
{
    public ToyDataset(int perEnv = 40, int size = 16, int badIndex = -1)
    {
        var names = new[] { "red", "green", "blue" };
        Spec = new DatasetSpec("Toy", "toy", names, new[] { "top", "bottom" }, 3, size, size, 30, 10, Preprocess.ImageNet);
        Environments = names.Select((n, e) => (IDomainEnvironment)new Env(n, e, perEnv, size, badIndex)).ToList();
    }

    public DatasetSpec Spec { get; }
    public IReadOnlyList<IDomainEnvironment> Environments { get; }

    sealed class Env(string name, int e, int count, int size, int bad) : IDomainEnvironment
    {
        public string Name => name;
        public int Count => count;
        public int LabelOf(int i) => i % 2;
        public string SourceOf(int i) => $"toy:{name}/{i}";
        public IReadOnlyList<Keypoint>? KeypointsOf(int i) => null;
        public ImageU8 Load(int i)
        {
            if (i == bad) throw new ImageLoadException(SourceOf(i), "deliberately unreadable");
            var rng = new Random(e * 1000 + i);
            var px = new byte[size * size * 3];
            for (int y = 0; y < size; y++)
                for (int x = 0; x < size; x++)
                {
                    bool bright = (y < size / 2) == (i % 2 == 0);
                    for (int c = 0; c < 3; c++)
                        px[(y * size + x) * 3 + c] = (byte)Math.Clamp((bright ? 180 : 60) + (c == e ? 50 : 0) + rng.Next(-20, 21), 0, 255);
                }
            return new ImageU8(size, size, 3, px);
        }
    }
}

public class TrainerTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sfmoe-train-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    TrainOptions Options(string name, Algorithm algorithm = Algorithm.SFMoE, int steps = 25) => new()
    {
        DatasetInstance = new ToyDataset(),
        TestEnvs = new[] { 2 },
        Algorithm = algorithm,
        Model = algorithm == Algorithm.ERM ? "vit_test_patch8_32" : "sfmoe_test_patch8_32",
        Steps = steps,
        CheckpointFreq = 10,
        BatchSize = 8,
        Lr = 1e-3,
        OutputDir = Path.Combine(_dir, name),
        RecordTimings = false,
        Workers = 2,
    };

    static string[] Lines(string dir) => File.ReadAllLines(Path.Combine(dir, "results.jsonl"));

    [Fact]
    public void WritesDomainBedResultsAModelFileAndDone()
    {
        var o = Options("run");
        var r = Trainer.Run(o);
        Assert.True(r.Done);
        Assert.True(File.Exists(Path.Combine(o.OutputDir, "done")));
        var lines = Lines(o.OutputDir);
        Assert.Equal(new[] { 0, 10, 20, 24 }, lines.Select(l => JsonDocument.Parse(l).RootElement.GetProperty("step").GetInt32()));
        using var doc = JsonDocument.Parse(lines[^1]);
        var root = doc.RootElement;
        foreach (var key in new[] { "step", "epoch", "loss", "aux_loss", "step_time", "mem_gb", "hparams", "args",
                                    "env0_in_acc", "env0_out_acc", "env1_in_acc", "env1_out_acc", "env2_in_acc", "env2_out_acc", "routing" })
            Assert.True(root.TryGetProperty(key, out _), key);
        Assert.Equal("SFMoE", root.GetProperty("args").GetProperty("algorithm").GetString());
        Assert.Equal(2, root.GetProperty("args").GetProperty("test_envs")[0].GetInt32());
        Assert.Equal(8, root.GetProperty("hparams").GetProperty("batch_size").GetInt32());
        var load = root.GetProperty("routing").GetProperty("blocks.1").GetProperty("load").EnumerateArray().Select(x => x.GetDouble()).ToList();
        Assert.Equal(4, load.Count);
        Assert.Equal(1.0, load.Sum(), 3);
        Assert.True(root.GetProperty("aux_loss").GetDouble() >= 0.02 - 1e-6, "two sparse blocks: aux >= 2 * 0.01");

        // The model file carries everything needed to rebuild and run the model.
        var (net, header) = ModelFile.Load(r.ModelPath);
        using var module = net.Module;
        Assert.Equal("vit", header.Backbone);
        Assert.Equal(new[] { "top", "bottom" }, header.ClassNames);
        Assert.Equal(24, header.Step);
        Assert.Equal(2, header.NumClasses);
    }

    [Fact]
    public void ASecondRunWithTheSameSeedsIsIdentical()
    {
        var a = Options("a", steps: 12);
        var b = Options("b", steps: 12);
        Trainer.Run(a);
        Trainer.Run(b);
        var la = Lines(a.OutputDir).Select(l => l.Replace(a.OutputDir, "OUT"));
        var lb = Lines(b.OutputDir).Select(l => l.Replace(b.OutputDir, "OUT"));
        Assert.Equal(la, lb);
    }

    [Fact]
    public void AResumedRunEqualsAnUninterruptedOne()
    {
        var full = Options("full");
        Trainer.Run(full);
        var part = Options("part");
        part.StopAfterSteps = 15; // killed after step 14: the last checkpoint is step 10
        var stopped = Trainer.Run(part);
        Assert.False(stopped.Done);
        Assert.False(File.Exists(Path.Combine(part.OutputDir, "done")));
        part.StopAfterSteps = null;
        part.Resume = true;
        part.Lr = 5e-4;
        Assert.Equal("cannot resume " + part.OutputDir + " with other settings: hparams.lr was 0.001, now 0.0005",
                     Assert.ThrowsAny<SfMoeException>(() => Trainer.Run(part)).Message);
        part.Lr = 1e-3;
        var resumed = Trainer.Run(part);
        Assert.True(resumed.Done);
        Assert.Equal(Lines(full.OutputDir).Select(l => l.Replace(full.OutputDir, "OUT")), Lines(part.OutputDir).Select(l => l.Replace(part.OutputDir, "OUT")));
    }

    [Fact]
    public void TrainingSurvivesTheGarbageCollectorRunningFinalizersConcurrently()
    {
        // TorchSharp frees temporaries in finalizers; a finalizer running during a native call that still uses the
        // object crashes or corrupts (see SfMoe.Core.Tensors.Scalars). Hammer the GC during a whole run.
        using var stop = new ManualResetEventSlim(false);
        var hammer = new Thread(() => { while (!stop.IsSet) { GC.Collect(); GC.WaitForPendingFinalizers(); } }) { IsBackground = true };
        hammer.Start();
        try
        {
            var o = Options("gc", steps: 40);
            o.Algorithm = Algorithm.GMoE;
            o.Model = "gmoe_test_patch8_32";
            Assert.True(Trainer.Run(o).Done);
            var o2 = Options("gc2", steps: 40);
            Assert.True(Trainer.Run(o2).Done);
        }
        finally { stop.Set(); hammer.Join(); }
    }

    [Fact]
    public void TrainingCanStartFromAPretrainedCheckpoint()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (!File.Exists(Path.Combine(root.FullName, "SfMoe.sln"))) root = root.Parent!;
        var deit = Path.Combine(root.FullName, "tests", "fixtures", "interop", "deit_tiny.pth");
        var o = Options("pretrained", steps: 1);
        o.Model = null;
        o.ModelConfigJson = """{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "num_classes": 2, "distilled": true, "pattern": "F,S"}""";
        o.Pretrained = deit;
        o.PretrainedFormat = "deit";
        o.Experts = ExpertInit.Copy;
        o.Lr = 1e-12; // one step that changes nothing measurable: the saved model holds the imported weights
        Trainer.Run(o);
        var log = File.ReadAllText(Path.Combine(o.OutputDir, "log.txt"));
        Assert.Contains("upcycled", log);
        var (net, _) = ModelFile.Load(Path.Combine(o.OutputDir, "model.safetensors"));
        using var module = net.Module;
        var direct = Networks.build(ModelSpec.resolve(ModelSpec.ofJson(o.ModelConfigJson!)), Tensors.DdModule.cpu, 0, 0.0);
        using var dm = direct.Module;
        Pretrained.LoadInto(direct, deit, "deit", ExpertInit.Copy);
        var a = module.state_dict();
        var b = dm.state_dict();
        foreach (var key in new[] { "blocks.0.attn.qkv.weight", "pos_embed", "blocks.1.mlp.experts.w1" })
            Assert.True(a[key].allclose(b[key], rtol: 1e-6, atol: 1e-9), key);
        var bad = Options("pretrained-bad", steps: 1);
        bad.Pretrained = deit;
        Assert.Contains("TrainOptions.Pretrained needs TrainOptions.PretrainedFormat", Assert.ThrowsAny<SfMoeException>(() => Trainer.Run(bad)).Message);
    }

    [Fact]
    public void BadOptionsAreClearErrors()
    {
        var o = Options("bad");
        o.TestEnvs = new[] { 3 };
        Assert.Equal("test env 3 is out of range: Toy has environments 0..2", Assert.ThrowsAny<SfMoeException>(() => Trainer.Run(o)).Message);
        o.TestEnvs = new[] { 0, 1, 2 };
        Assert.Equal("every environment of Toy is a test env: none is left to train on", Assert.ThrowsAny<SfMoeException>(() => Trainer.Run(o)).Message);
        o.TestEnvs = new[] { 0 };
        o.Algorithm = (Algorithm)7;
        Assert.Equal("unknown algorithm 7: expected ERM, SFMoE or GMoE", Assert.ThrowsAny<SfMoeException>(() => Trainer.Run(o)).Message);
        o.Algorithm = Algorithm.SFMoE;
        o.Model = "resnet50";
        Assert.Equal("SFMoE needs a ViT model with sparse blocks, not resnet50", Assert.ThrowsAny<SfMoeException>(() => Trainer.Run(o)).Message);
        var done = Options("twice", steps: 2);
        Trainer.Run(done);
        Assert.Contains("already holds a run", Assert.ThrowsAny<SfMoeException>(() => Trainer.Run(Options("twice", steps: 2))).Message);
        var nothing = Options("nothing");
        nothing.Resume = true;
        Assert.Contains("nothing to resume", Assert.ThrowsAny<SfMoeException>(() => Trainer.Run(nothing)).Message);
    }

    [Fact]
    public void UnreadableImagesAreSkippedWithOneWarning()
    {
        var o = Options("badimg", steps: 6);
        o.DatasetInstance = new ToyDataset(badIndex: 3);
        var r = Trainer.Run(o);
        Assert.True(r.Done);
        var log = File.ReadAllText(Path.Combine(o.OutputDir, "log.txt"));
        Assert.Contains("skipping unreadable image toy:red/3: deliberately unreadable", log);
        Assert.Single(log.Split('\n'), l => l.Contains("toy:red/3:"));
        Assert.True(log.Contains("3 unreadable images were skipped"), log);
    }
}

/// <summary>DomainBed's training loaders: one batch of B from each training environment per step, drawn uniformly
/// with replacement from its in-split, deterministic by (seed, step).</summary>
public class TrainStreamTests
{
    /// <summary>An environment whose label is the sample index, so a batch's labels say which samples it drew.</summary>
    sealed class Indexed(string name, int count) : IDomainEnvironment
    {
        public string Name => name;
        public int Count => count;
        public int LabelOf(int i) => i;
        public string SourceOf(int i) => $"{name}/{i}";
        public IReadOnlyList<Keypoint>? KeypointsOf(int i) => null;
        public ImageU8 Load(int i) => new(4, 4, 3, new byte[48]);
    }

    sealed class Pre : IPreprocessor
    {
        public int Channels => 3; public int Height => 4; public int Width => 4;
        public float[] Mean => new float[3]; public float[] Std => new[] { 1f, 1f, 1f };
        public void Train(ImageU8 image, Random rng, Span<float> dest) => dest.Clear();
        public ImageU8 Resize(ImageU8 image) => image;
        public void ToInput(ImageU8 resized, Span<float> dest) => dest.Clear();
    }

    [Fact]
    public void EachStepTakesOneBatchPerEnvironmentDrawnUniformlyWithReplacement()
    {
        var a = new Indexed("a", 50);
        var b = new Indexed("b", 10);
        var envs = new List<(IDomainEnvironment, int[])> { (a, Enumerable.Range(0, 50).ToArray()), (b, new[] { 1, 3, 5, 7 }) };
        using var log = new RunLog(null, null);
        using var s = new TrainStream(envs, 8, new Pre(), 42, 0, 2, new SafeLoader(log), CPU);
        var countsA = new int[50];
        var countsB = new Dictionary<long, int>();
        for (int step = 0; step < 500; step++)
        {
            using var batch = s.Next();
            Assert.Equal(step, batch.Step);
            Assert.Equal(2, batch.Xs.Length);
            Assert.Equal(new long[] { 8, 3, 4, 4 }, batch.Xs[0].shape);
            Assert.Equal(new long[] { 8 }, batch.Ys[1].shape);
            foreach (var y in batch.Ys[0].data<long>().ToArray()) countsA[y]++;
            foreach (var y in batch.Ys[1].data<long>().ToArray()) countsB[y] = countsB.GetValueOrDefault(y) + 1;
        }
        // 4000 draws over 50 samples: 80 expected each; every sample is drawn, none wildly more than others
        Assert.All(countsA, c => Assert.InRange(c, 40, 130));
        Assert.Equal(new long[] { 1, 3, 5, 7 }, countsB.Keys.OrderBy(k => k));   // only the in-split
        Assert.All(countsB.Values, c => Assert.InRange(c, 850, 1150));            // 1000 expected each
        // replacement: some batch repeats a sample of the 4-sample split (8 draws from 4)
        using var again = new TrainStream(envs, 8, new Pre(), 42, 7, 1, new SafeLoader(log), CPU);
        using var s7 = again.Next();
        using var replay = new TrainStream(envs, 8, new Pre(), 42, 0, 2, new SafeLoader(log), CPU).Build(7);
        Assert.Equal(replay.Ys[0].data<long>().ToArray(), s7.Ys[0].data<long>().ToArray());     // a pure function of (seed, step)
        Assert.Equal(8, s7.Ys[1].data<long>().ToArray().Length);
    }
}
