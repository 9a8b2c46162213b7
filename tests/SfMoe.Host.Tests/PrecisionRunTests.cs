using System.Text.Json;
using System.Text.Json.Nodes;
using SfMoe.Runs;
using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe.Host.Tests;

/// <summary>Precision and deterministic algorithms through the host API: recorded in results.jsonl's args, restored
/// and checked on resume, bf16 evaluation, and --deterministic changing nothing on the CPU.</summary>
public class PrecisionRunTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sfmoe-precision-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    TrainOptions Options(string name, int steps = 12) => new()
    {
        DatasetInstance = new ToyDataset(),
        TestEnvs = new[] { 2 },
        Algorithm = Algorithm.SFMoE,
        Model = "sfmoe_test_patch8_32",
        Steps = steps,
        CheckpointFreq = 5,
        BatchSize = 8,
        Lr = 1e-3,
        OutputDir = Path.Combine(_dir, name),
        RecordTimings = false,
        Workers = 1,
    };

    static string[] Lines(TrainOptions o) =>
        File.ReadAllLines(Path.Combine(o.OutputDir, "results.jsonl")).Select(l => l.Replace(o.OutputDir, "OUT")).ToArray();

    static JsonObject Args(string line) => (JsonNode.Parse(line)!["args"] as JsonObject)!;

    [Fact]
    public void ResultsRecordThePrecisionAndAResumeKeepsItOrRefusesAnother()
    {
        // The default is fp32, recorded as such.
        var fp32 = Options("fp32", steps: 6);
        Trainer.Run(fp32);
        Assert.All(Lines(fp32), l => Assert.Equal("fp32", Args(l)["precision"]!.GetValue<string>()));
        Assert.All(Lines(fp32), l => Assert.False(Args(l)["deterministic"]!.GetValue<bool>()));

        // bf16, uninterrupted, against a run killed after step 7 and resumed without naming the precision.
        var full = Options("bf16-full");
        full.Precision = Precision.Bf16;
        Trainer.Run(full);
        var fullLines = Lines(full);
        Assert.All(fullLines, l => Assert.Equal("bf16", Args(l)["precision"]!.GetValue<string>()));
        Assert.Contains("precision bf16 on ", File.ReadAllText(Path.Combine(full.OutputDir, "log.txt")));

        var part = Options("bf16-part");
        part.Precision = Precision.Bf16;
        part.StopAfterSteps = 8;
        Assert.False(Trainer.Run(part).Done);
        part.StopAfterSteps = null;
        part.Resume = true;
        part.Precision = Precision.Fp32;
        Assert.Equal($"cannot resume {part.OutputDir} with other settings: precision was \"bf16\", now \"fp32\" "
                     + "(leave TrainOptions.Precision unset to continue in the run's precision)",
                     Assert.ThrowsAny<SfMoeException>(() => Trainer.Run(part)).Message);
        part.Precision = null; // the run's own: bf16
        Assert.True(Trainer.Run(part).Done);
        Assert.Equal(fullLines, Lines(part));
    }

    [Fact]
    public void ARunSavedBeforePrecisionsExistedResumesAsFp32()
    {
        var now = new JsonObject { ["seed"] = 0, ["precision"] = "fp32", ["deterministic"] = true, ["output_dir"] = "b" };
        var saved = new JsonObject { ["seed"] = 0, ["output_dir"] = "a" };
        Assert.Empty(ResultsLog.Changes(now, saved));
        Assert.Equal(Precision.Fp32, ResultsLog.SavedPrecision(saved));
        now["precision"] = "bf16";
        Assert.Equal(new[] { "precision was \"fp32\", now \"bf16\"" }, ResultsLog.Changes(now, saved));
        Assert.Null(ResultsLog.SavedPrecision(new JsonObject { ["precision"] = "fp8" }));
    }

    [Fact]
    public void DeterministicAlgorithmsChangeNothingOnTheCpuAndAreOnlyOnDuringTheRun()
    {
        Assert.False(Determinism.Enabled);
        var plain = Options("plain", steps: 8);
        Trainer.Run(plain);
        var det = Options("det", steps: 8);
        det.Deterministic = true;
        var during = new List<bool>();
        Trainer.Run(det, p => during.Add(Determinism.Enabled));
        Assert.All(during, Assert.True);
        Assert.False(Determinism.Enabled); // restored after the run
        Assert.All(Lines(det), l => Assert.True(Args(l)["deterministic"]!.GetValue<bool>()));
        Assert.Contains("deterministic algorithms on", File.ReadAllText(Path.Combine(det.OutputDir, "log.txt")));
        // Identical results, the recorded flag aside.
        Assert.Equal(Lines(plain), Lines(det).Select(l => l.Replace("\"deterministic\":true", "\"deterministic\":false")));
    }

    [Fact]
    public void Bf16EvaluationIsWithinBf16ToleranceOfFp32()
    {
        var o = Options("eval", steps: 3);
        var r = Trainer.Run(o);
        using var fp32 = TrainedModel.Load(r.ModelPath);
        using var bf16 = TrainedModel.Load(r.ModelPath, "cpu", Precision.Bf16);
        using var tf32 = TrainedModel.Load(r.ModelPath, "cpu", Precision.Tf32);
        Assert.Equal(Precision.Bf16, bf16.Precision);
        Assert.Contains("precision tf32 changes nothing on ", tf32.PrecisionNote);
        using var gen = new Generator(5);
        using var x = torch.randn(new long[] { 16, 3, 32, 32 }, generator: gen);
        using var a = fp32.Logits(x);
        using var b = bf16.Logits(x);
        using var c = tf32.Logits(x);
        Assert.Equal(ScalarType.Float32, b.dtype);
        Assert.True(c.allclose(a, rtol: 0, atol: 0), "tf32 computes exactly as fp32 on the CPU");
        Assert.False(b.allclose(a, rtol: 0, atol: 0), "bf16 really computes in bfloat16");
        using var diff = (b - a).norm();
        using var norm = a.norm();
        double rel = diff.item<float>() / norm.item<float>();
        Assert.True(rel < 0.05, $"relative error {rel}");
        using var pa = a.argmax(1);
        using var pb = b.argmax(1);
        using var same = pa.eq(pb).to_type(ScalarType.Float32).mean();
        Assert.True(same.item<float>() >= 0.9f, $"predictions agree on {same.item<float>():P0}");
        Assert.Throws<ConfigException>(() => TrainedModel.Load(r.ModelPath, "cpu", (Precision)9));
    }
}
