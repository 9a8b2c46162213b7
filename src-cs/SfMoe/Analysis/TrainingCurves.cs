using System.Text.Json;
using SfMoe.Runs;

namespace SfMoe.Analysis;

/// <summary>
/// The curves of one training run, read from its <c>results.jsonl</c> (one line per evaluation): loss, aux loss, accuracy
/// per environment and split, and per sparse block the expert load and dropped-token fraction since the previous line.
/// </summary>
public sealed class TrainingCurves
{
    /// <summary>The run's name (its folder relative to the input folder).</summary>
    public required string Name { get; init; }
    /// <summary>The results file.</summary>
    public required string Path { get; init; }
    /// <summary>Dataset named in the records' args, if any.</summary>
    public string? Dataset { get; init; }
    /// <summary>Algorithm named in the records' args, if any.</summary>
    public string? Algorithm { get; init; }
    /// <summary>Held-out environments.</summary>
    public IReadOnlyList<int> TestEnvs { get; init; } = [];
    /// <summary>Step of each record.</summary>
    public required double[] Steps { get; init; }
    /// <summary>Loss (mean since the previous record) per record; NaN where missing.</summary>
    public required double[] Loss { get; init; }
    /// <summary>Aux loss per record; NaN where missing.</summary>
    public required double[] AuxLoss { get; init; }
    /// <summary>"env{i}_in_acc" / "env{i}_out_acc" to one value per record (NaN where missing), sorted by key.</summary>
    public required IReadOnlyDictionary<string, double[]> Accuracy { get; init; }
    /// <summary>Sparse block name ("blocks.3") to, per record, the load fraction per expert (null where missing).</summary>
    public required IReadOnlyDictionary<string, double[]?[]> ExpertLoad { get; init; }
    /// <summary>Sparse block name to the dropped-token fraction per record (NaN where missing).</summary>
    public required IReadOnlyDictionary<string, double[]> DroppedTokens { get; init; }

    /// <summary>Environment indices that have accuracies, ascending.</summary>
    public IReadOnlyList<int> Environments =>
        Accuracy.Keys.Select(k => k.Split('_')[0]).Distinct().Select(e => int.Parse(e[3..])).OrderBy(i => i).ToArray();

    /// <summary>Per record, the mean in-split accuracy of the held-out environments (NaN without them).</summary>
    public double[] TestAccuracy => Mean(TestEnvs.Select(e => $"env{e}_in_acc"));

    /// <summary>Per record, the mean out-split (validation) accuracy of the training environments.</summary>
    public double[] ValidationAccuracy => Mean(Environments.Where(e => !TestEnvs.Contains(e)).Select(e => $"env{e}_out_acc"));

    double[] Mean(IEnumerable<string> keys)
    {
        var cols = keys.Where(Accuracy.ContainsKey).Select(k => Accuracy[k]).ToArray();
        return Steps.Select((_, i) => cols.Length == 0 ? double.NaN : cols.Average(c => c[i])).ToArray();
    }

    /// <summary>
    /// Reads one results file. A truncated last line (a killed run) is skipped; any other malformed line is an error
    /// naming the file and line.
    /// </summary>
    public static TrainingCurves Read(string resultsPath, string? name = null)
    {
        if (!File.Exists(resultsPath)) throw new RunException($"{resultsPath}: file not found");
        var lines = File.ReadAllLines(resultsPath);
        var steps = new List<double>(); var loss = new List<double>(); var aux = new List<double>();
        var acc = new SortedDictionary<string, List<double>>(StringComparer.Ordinal);
        var load = new SortedDictionary<string, List<double[]?>>(StringComparer.Ordinal);
        var dropped = new SortedDictionary<string, List<double>>(StringComparer.Ordinal);
        string? dataset = null, algorithm = null;
        int[] testEnvs = [];
        int last = Array.FindLastIndex(lines, l => l.Trim().Length > 0);
        for (int i = 0; i < lines.Length; i++)
        {
            if (lines[i].Trim().Length == 0) continue;
            JsonDocument doc;
            try { doc = JsonDocument.Parse(lines[i]); }
            catch (JsonException e)
            {
                if (i == last) continue;
                throw new RunException($"{resultsPath}:{i + 1}: not a JSON record ({e.Message})");
            }
            using (doc)
            {
                var r = doc.RootElement;
                if (r.ValueKind != JsonValueKind.Object || !r.TryGetProperty("step", out var st) || st.ValueKind != JsonValueKind.Number)
                    throw new RunException($"{resultsPath}:{i + 1}: a record needs a numeric \"step\"");
                int row = steps.Count;
                steps.Add(st.GetDouble());
                loss.Add(Num(r, "loss"));
                aux.Add(Num(r, "aux_loss"));
                foreach (var p in r.EnumerateObject())
                    if (p.Name.StartsWith("env", StringComparison.Ordinal) && p.Name.EndsWith("_acc", StringComparison.Ordinal) && p.Value.ValueKind == JsonValueKind.Number)
                        Col(acc, p.Name, row, double.NaN).Add(p.Value.GetDouble());
                if (r.TryGetProperty("routing", out var routing) && routing.ValueKind == JsonValueKind.Object)
                    foreach (var b in routing.EnumerateObject())
                    {
                        if (b.Value.TryGetProperty("load", out var l) && l.ValueKind == JsonValueKind.Array)
                            Col(load, b.Name, row, null).Add(l.EnumerateArray().Select(v => v.GetDouble()).ToArray());
                        if (b.Value.TryGetProperty("dropped_token_fraction", out var d) && d.ValueKind == JsonValueKind.Number)
                            Col(dropped, b.Name, row, double.NaN).Add(d.GetDouble());
                    }
                if (r.TryGetProperty("args", out var args) && args.ValueKind == JsonValueKind.Object)
                {
                    if (args.TryGetProperty("dataset", out var ds) && ds.ValueKind == JsonValueKind.String) dataset = ds.GetString();
                    if (args.TryGetProperty("algorithm", out var al) && al.ValueKind == JsonValueKind.String) algorithm = al.GetString();
                    if (args.TryGetProperty("test_envs", out var te) && te.ValueKind == JsonValueKind.Array)
                        testEnvs = te.EnumerateArray().Where(v => v.ValueKind == JsonValueKind.Number).Select(v => v.GetInt32()).ToArray();
                }
            }
            foreach (var c in acc.Values) Pad(c, steps.Count, double.NaN);
            foreach (var c in load.Values) Pad(c, steps.Count, null);
            foreach (var c in dropped.Values) Pad(c, steps.Count, double.NaN);
        }
        return new TrainingCurves
        {
            Name = name ?? System.IO.Path.GetFileName(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(resultsPath))) ?? resultsPath,
            Path = resultsPath, Dataset = dataset, Algorithm = algorithm, TestEnvs = testEnvs,
            Steps = steps.ToArray(), Loss = loss.ToArray(), AuxLoss = aux.ToArray(),
            Accuracy = acc.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray()),
            ExpertLoad = load.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray()),
            DroppedTokens = dropped.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray()),
        };
    }

    static double Num(JsonElement r, string key) =>
        r.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : double.NaN;

    static List<T> Col<T>(IDictionary<string, List<T>> d, string key, int row, T fill)
    {
        if (!d.TryGetValue(key, out var c)) d[key] = c = [];
        Pad(c, row, fill);
        return c;
    }

    static void Pad<T>(List<T> c, int n, T fill) { while (c.Count < n) c.Add(fill); }

    /// <summary>
    /// Every run under <paramref name="inputDirectory"/>: its own <c>results.jsonl</c> and those in sub-folders at any depth,
    /// sorted by relative folder. Names are the relative folders ("." for the input folder itself).
    /// </summary>
    public static IReadOnlyList<TrainingCurves> ReadAll(string inputDirectory)
    {
        if (!Directory.Exists(inputDirectory)) throw new RunException($"{inputDirectory}: folder not found");
        var root = System.IO.Path.GetFullPath(inputDirectory);
        var files = Directory.EnumerateFiles(root, Records.ResultsFileName, SearchOption.AllDirectories)
            .Select(f => (File: f, Rel: System.IO.Path.GetRelativePath(root, System.IO.Path.GetDirectoryName(f)!)))
            .OrderBy(t => t.Rel, StringComparer.Ordinal).ToArray();
        if (files.Length == 0) throw new RunException($"{inputDirectory}: no {Records.ResultsFileName} found (in it or below)");
        return files.Select(t => Read(t.File, t.Rel == "." ? System.IO.Path.GetFileName(root) : t.Rel)).ToArray();
    }
}
