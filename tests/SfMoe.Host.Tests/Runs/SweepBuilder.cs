using System.Globalization;
using System.Text;
using SfMoe.Runs;

namespace SfMoe.Host.Tests.Runs;

/// <summary>Hand-made DomainBed records and sweep folders for the SfMoe.Runs tests.</summary>
internal static class SweepBuilder
{
    static string N(double x) =>
        double.IsNaN(x) ? "NaN" : double.IsPositiveInfinity(x) ? "Infinity" : x.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>A results.jsonl line as DomainBed's train.py writes it (keys sorted); accuracies indexed by env.</summary>
    public static string Rec(string dataset, string algorithm, int[] testEnvs, int trial, int hp, long step,
        double[] inAcc, double[] outAcc, string? extra = null, double loss = 0.5)
    {
        var sb = new StringBuilder();
        sb.Append("{\"args\": {\"algorithm\": \"").Append(algorithm).Append("\", \"checkpoint_freq\": 100, \"data_dir\": \"/data\", \"dataset\": \"")
          .Append(dataset).Append("\", \"holdout_fraction\": 0.2, \"hparams\": null, \"hparams_seed\": ").Append(hp)
          .Append(", \"output_dir\": \"out\", \"seed\": 1, \"steps\": 301, \"task\": \"domain_generalization\", \"test_envs\": [")
          .Append(string.Join(", ", testEnvs)).Append("], \"trial_seed\": ").Append(trial).Append("}, ");
        sb.Append("\"aux_loss\": 0.01, ");
        for (int i = 0; i < inAcc.Length; i++)
            sb.Append($"\"env{i}_in_acc\": {N(inAcc[i])}, \"env{i}_out_acc\": {N(outAcc[i])}, ");
        sb.Append($"\"epoch\": {N(step / 50.0)}, \"hparams\": {{\"batch_size\": 32, \"lr\": 5e-05}}, \"loss\": {N(loss)}, \"mem_gb\": 1.5, ");
        if (extra is not null) sb.Append(extra).Append(", ");
        sb.Append($"\"step\": {step}, \"step_time\": 0.25}}");
        return sb.ToString();
    }

    /// <summary>A record parsed in memory (no file).</summary>
    public static RunRecord R(string dataset, int[] testEnvs, int trial, int hp, long step, double[] inAcc, double[] outAcc,
        string algorithm = "ERM") =>
        RunRecord.Parse(Rec(dataset, algorithm, testEnvs, trial, hp, step, inAcc, outAcc));

    /// <summary>Writes DIR/name/results.jsonl (each line + "\n", then <paramref name="tail"/> without one) and a done file.</summary>
    public static void WriteRun(string root, string name, IEnumerable<string> lines, bool done = true, string? tail = null)
    {
        var dir = Path.Combine(root, name);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, Records.ResultsFileName), string.Concat(lines.Select(l => l + "\n")) + (tail ?? ""));
        if (done) File.WriteAllText(Path.Combine(dir, Records.DoneFileName), "done");
    }

    /// <summary>The repository's tests/fixtures/rel.</summary>
    public static string Fixture(string rel)
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "SfMoe.sln"))) dir = dir.Parent;
        if (dir is null) throw new DirectoryNotFoundException("repository root (SfMoe.sln) not found above " + AppContext.BaseDirectory);
        return Path.Combine(dir.FullName, "tests", "fixtures", rel);
    }
}

/// <summary>A temporary directory removed at the end of a test.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir() => Directory.CreateDirectory(Path);
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "sfmoe-runs-" + Guid.NewGuid().ToString("N"));
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}
