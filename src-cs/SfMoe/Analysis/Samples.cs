using System.Globalization;
using System.Text;
using SfMoe.Data;
using SfMoe.Imaging;

namespace SfMoe.Analysis;

/// <summary>One dataset image chosen for analysis.</summary>
/// <param name="Env">Environment index.</param>
/// <param name="Index">Sample index in the environment.</param>
/// <param name="Label">Class index.</param>
public readonly record struct SampleRef(int Env, int Index, int Label);

/// <summary>Which dataset images an analysis looks at, and running a model over them in batches.</summary>
public static class AnalysisSamples
{
    /// <summary>
    /// The first <paramref name="maxPerEnvironment"/> images of each environment's <paramref name="split"/> ("in": the 80%
    /// DomainBed trains on, "out": the 20% it validates on, "all"), in DomainBed's shuffled split order for
    /// <paramref name="trialSeed"/>, so a fixed number of images is a random sample that does not change between calls.
    /// </summary>
    public static IReadOnlyList<SampleRef> Select(IMultiDomainDataset dataset, string split = "in", int maxPerEnvironment = 200, int trialSeed = 0)
    {
        if (maxPerEnvironment < 1) throw new DatasetException($"max images must be >= 1, got {maxPerEnvironment}");
        var list = new List<SampleRef>();
        for (int e = 0; e < dataset.Environments.Count; e++)
        {
            var env = dataset.Environments[e];
            IEnumerable<int> idx = split switch
            {
                "in" => Splits.EnvSplit(e, env.Count, trialSeed).In,
                "out" => Splits.EnvSplit(e, env.Count, trialSeed).Out,
                "all" => Enumerable.Range(0, env.Count),
                _ => throw new DatasetException($"split must be in, out or all, got {split}"),
            };
            list.AddRange(idx.Take(maxPerEnvironment).Select(i => new SampleRef(e, i, env.LabelOf(i))));
        }
        return list;
    }

    /// <summary>
    /// Runs <paramref name="samples"/> through <paramref name="probe"/> in batches and calls <paramref name="onBatch"/> with
    /// the batch's readable samples, their decoded images and the probe result. Unreadable images are skipped and passed to
    /// <paramref name="warn"/>.
    /// </summary>
    public static int ForEachBatch(ModelProbe probe, IMultiDomainDataset dataset, IReadOnlyList<SampleRef> samples, int batchSize,
        bool attention, bool routing, Action<IReadOnlyList<SampleRef>, IReadOnlyList<ImageU8>, ProbeResult> onBatch, Action<string>? warn = null)
    {
        if (batchSize < 1) throw new DatasetException($"batch size must be >= 1, got {batchSize}");
        int done = 0;
        for (int start = 0; start < samples.Count; start += batchSize)
        {
            var refs = new List<SampleRef>();
            var images = new List<ImageU8>();
            foreach (var s in samples.Skip(start).Take(batchSize))
            {
                try { images.Add(dataset.Environments[s.Env].Load(s.Index)); refs.Add(s); }
                catch (ImageLoadException e) { warn?.Invoke($"skipped {e.Message}"); }
            }
            if (images.Count == 0) continue;
            var r = probe.Probe(images, attention, routing, dataset.Spec);
            onBatch(refs, images, r);
            done += images.Count;
        }
        return done;
    }
}

/// <summary>Small helpers for the report files.</summary>
internal static class ReportText
{
    public static string F(double v, string fmt = "0.000") => double.IsFinite(v) ? v.ToString(fmt, CultureInfo.InvariantCulture) : "-";

    public static string Table(IReadOnlyList<string> header, IEnumerable<IReadOnlyList<string>> rows)
    {
        var sb = new StringBuilder();
        sb.Append("| ").Append(string.Join(" | ", header)).Append(" |\n");
        sb.Append('|').Append(string.Join("|", header.Select((_, i) => i == 0 ? "---" : "---:"))).Append("|\n");
        foreach (var r in rows) sb.Append("| ").Append(string.Join(" | ", r.Select(c => c.Replace("|", "\\|")))).Append(" |\n");
        return sb.ToString();
    }

    /// <summary>A file-name-safe version of a name.</summary>
    public static string Safe(string name)
    {
        var s = new string(name.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_').ToArray()).Trim('_', '.');
        return s.Length == 0 ? "x" : s;
    }

    public static double[][] Rows(double[,] m) =>
        Enumerable.Range(0, m.GetLength(0)).Select(i => Enumerable.Range(0, m.GetLength(1)).Select(j => m[i, j]).ToArray()).ToArray();
}
