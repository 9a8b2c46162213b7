using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using SfMoe.Data;
using SfMoe.Imaging;
using static SfMoe.Analysis.ReportText;

namespace SfMoe.Analysis;

/// <summary>Settings of <see cref="AttentionReport"/> (<c>sfmoe analyze attention</c>).</summary>
public sealed class AttentionReportOptions
{
    /// <summary>Model files (one or more: a ViT and an SF-MoE to compare).</summary>
    public required IReadOnlyList<string> Checkpoints { get; set; }
    /// <summary>Image files to draw the heads' maps for.</summary>
    public IReadOnlyList<string> Images { get; set; } = [];
    /// <summary>Optionally a dataset whose images also enter the redundancy score (and are drawn when no image is given).</summary>
    public string? Dataset { get; set; }
    /// <summary>Folder holding the datasets.</summary>
    public string? DataDir { get; set; }
    /// <summary>Dataset images per environment (default 25).</summary>
    public int MaxImages { get; set; } = 25;
    /// <summary>Dataset images drawn when no image file is given (default 4).</summary>
    public int Samples { get; set; } = 4;
    /// <summary>Block whose maps are drawn; negative counts from the end (default -1: the last, as the paper).</summary>
    public int Block { get; set; } = -1;
    /// <summary>DINO's mass threshold (e.g. 0.6): outline the fewest patches holding that share of each head's attention.</summary>
    public double? Threshold { get; set; }
    /// <summary>Images per forward pass.</summary>
    public int BatchSize { get; set; } = 16;
    /// <summary>Seed of the model's random choices.</summary>
    public long Seed { get; set; }
    /// <summary>Where the files go.</summary>
    public required string OutputDir { get; set; }
    /// <summary>cpu (default) or cuda.</summary>
    public string Device { get; set; } = "cpu";
}

/// <summary>Head redundancy of one model per block.</summary>
/// <param name="Model">The model's name.</param>
/// <param name="PerBlock">Mean pairwise cosine similarity of the heads' CLS maps, per block.</param>
/// <param name="Kinds">"S" or "F" per block.</param>
/// <param name="PatternPerBlock">Mean pairwise Pearson correlation of the heads' maps, per block (see
/// <see cref="AttentionMaps.PatternRedundancy"/>).</param>
public sealed record ModelRedundancy(string Model, double[] PerBlock, IReadOnlyList<string> Kinds, double[] PatternPerBlock);

/// <summary>
/// Attention analysis, as SF-MoE's Figure 3: per model, the CLS token's attention over the patches per head in one block,
/// overlaid on each image (<c>attention_{model}_{image}.png</c>), and per block the head redundancy (mean pairwise cosine
/// similarity of the heads' maps, averaged over the images): <c>redundancy.json</c>, <c>redundancy.md</c>,
/// <c>redundancy.png</c> (one line per model).
/// </summary>
public sealed class AttentionReport
{
    AttentionReport(IReadOnlyList<ModelRedundancy> models, int images, IReadOnlyList<string> files)
    { Models = models; Images = images; Files = files; }

    /// <summary>Per model, the head redundancy per block and the block kinds.</summary>
    public IReadOnlyList<ModelRedundancy> Models { get; }
    /// <summary>Images per model.</summary>
    public int Images { get; }
    /// <summary>Files written.</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>Opens the models and images, analyses and writes the files.</summary>
    public static AttentionReport Run(AttentionReportOptions o, Action<string>? log = null)
    {
        if (o.Checkpoints.Count == 0) throw new ConfigException("give at least one --checkpoint");
        if (o.Images.Count == 0 && o.Dataset is null) throw new ConfigException("give image files or --dataset");
        var named = o.Images.Select(p =>
        {
            try { return (Name: Path.GetFileNameWithoutExtension(p), Image: ImageCodec.Decode(p)); }
            catch (ImageLoadException e) { throw new ConfigException(e.Message, e); }
        }).ToList();
        var probes = new List<ModelProbe>();
        try
        {
            foreach (var c in o.Checkpoints) probes.Add(ModelProbe.Load(c, o.Device, o.Seed));
            var names = probes.Select(p => p.Name).ToArray();
            for (int i = 0; i < probes.Count; i++)   // distinct names for files and legends
                if (names.Count(n => n == names[i]) > 1) probes[i].Name = $"{names[i]}_{i}";
            IMultiDomainDataset? ds = o.Dataset is null ? null : Datasets.Open(o.Dataset, o.DataDir, ImageCodec.Decode);
            return Run(probes, named, ds, o, log);
        }
        finally { foreach (var p in probes) p.Dispose(); }
    }

    /// <summary>Analyses opened models on decoded images (and optionally a dataset) and writes the files.</summary>
    public static AttentionReport Run(IReadOnlyList<ModelProbe> probes, IReadOnlyList<(string Name, ImageU8 Image)> images, IMultiDomainDataset? ds,
        AttentionReportOptions o, Action<string>? log = null)
    {
        var all = images.ToList();
        if (ds is not null)
        {
            // round-robin over environments, so the first images drawn come from every domain
            var samples = AnalysisSamples.Select(ds, "in", o.MaxImages, 0)
                .GroupBy(s => s.Env).SelectMany(g => g.Select((s, i) => (s, i))).OrderBy(t => t.i).ThenBy(t => t.s.Env).Select(t => t.s).ToArray();
            foreach (var s in samples)
            {
                try { all.Add(($"{ds.Spec.Environments[s.Env]}_{s.Index}", ds.Environments[s.Env].Load(s.Index))); }
                catch (ImageLoadException e) { log?.Invoke($"skipped {e.Message}"); }
            }
        }
        if (all.Count == 0) throw new ConfigException("no readable images");
        var drawn = images.Count > 0 ? images.Count : Math.Min(o.Samples, all.Count);
        // distinct file names for drawn images
        var fileNames = new List<string>();
        for (int i = 0; i < drawn; i++)
        {
            var n = Safe(all[i].Name);
            fileNames.Add(fileNames.Contains(n) ? $"{n}_{i}" : n);
        }
        Directory.CreateDirectory(o.OutputDir);
        var files = new List<string>();
        string Out(string f) { var p = Path.Combine(o.OutputDir, f); files.Add(p); return p; }
        var results = new List<ModelRedundancy>();
        foreach (var probe in probes)
        {
            int block = o.Block < 0 ? probe.Depth + o.Block : o.Block;
            if (block < 0 || block >= probe.Depth) throw new ConfigException($"--block {o.Block}: {probe.Name} has blocks 0..{probe.Depth - 1}");
            var sums = new double[probe.Depth];
            var corr = new double[probe.Depth];
            int count = 0;
            for (int start = 0; start < all.Count; start += o.BatchSize)
            {
                var batch = all.Skip(start).Take(o.BatchSize).ToArray();
                var r = probe.Probe(batch.Select(t => t.Image).ToArray(), attention: true, routing: false, ds?.Spec);
                for (int b = 0; b < probe.Depth; b++)
                    for (int i = 0; i < r.Batch; i++)
                    {
                        var maps = Enumerable.Range(0, r.Heads).Select(h => r.ClsMap(b, i, h)).ToArray();
                        sums[b] += AttentionMaps.Redundancy(maps);
                        corr[b] += AttentionMaps.PatternRedundancy(maps);
                    }
                count += r.Batch;
                for (int i = 0; i < r.Batch && start + i < drawn; i++)
                {
                    var heads = Enumerable.Range(0, r.Heads).Select(h => r.ClsMap(block, i, h)).ToArray();
                    var masks = o.Threshold is double t ? heads.Select(m => AttentionMaps.ThresholdMask(m, t)).ToArray() : null;
                    var kind = probe.Kinds[block] == "S" ? "sparse" : "fusion";
                    Plots.AttentionGrid(batch[i].Image, heads, probe.Grid, masks, o.Threshold,
                            $"{probe.Name}: CLS attention per head, blocks.{block} ({kind}), {batch[i].Name}")
                        .SavePng(Out($"attention_{Safe(probe.Name)}_{fileNames[start + i]}.png"));
                }
            }
            results.Add(new ModelRedundancy(probe.Name, sums.Select(s => s / count).ToArray(), probe.Kinds, corr.Select(s => s / count).ToArray()));
            log?.Invoke($"{probe.Name}: {count} images, head redundancy of blocks.{block}: cosine {F(sums[block] / count)}, pattern correlation {F(corr[block] / count)}");
        }
        var report = new AttentionReport(results, all.Count, files);
        var json = new JsonObject
        {
            ["images"] = all.Count,
            ["measure"] = "redundancy: mean over images of the mean pairwise cosine similarity between the heads' CLS-to-patch attention maps; " +
                          "pattern_correlation: the same with the Pearson correlation (each map minus its mean)",
            ["models"] = new JsonArray(results.Select((m, i) => (JsonNode)new JsonObject
            {
                ["model"] = m.Model,
                ["checkpoint"] = i < o.Checkpoints.Count ? o.Checkpoints[i] : null,
                ["pattern"] = probes[i].Pattern,
                ["heads"] = probes[i].Heads,
                ["kinds"] = new JsonArray(m.Kinds.Select(k => (JsonNode?)k).ToArray()),
                ["redundancy"] = new JsonArray(m.PerBlock.Select(v => (JsonNode?)JsonValue.Create(double.IsFinite(v) ? Math.Round(v, 6) : (double?)null)).ToArray()),
                ["pattern_correlation"] = new JsonArray(m.PatternPerBlock.Select(v => (JsonNode?)JsonValue.Create(double.IsFinite(v) ? Math.Round(v, 6) : (double?)null)).ToArray()),
            }).ToArray()),
        };
        AtomicFile.WriteAllText(Out("redundancy.json"), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var sb = new StringBuilder($"# Head redundancy\n\nPer block, the mean over {all.Count} images of the mean pairwise similarity of the heads' ");
        sb.Append("CLS-to-patch attention maps: cosine similarity (1: all heads attend to the same patches; diffuse, near-uniform maps also score near 1) ");
        sb.Append("and Pearson correlation (the maps minus their means: agreement on where the heads look). Sparse blocks are marked S.\n\n");
        int depth = results.Max(m => m.PerBlock.Length);
        var header = new[] { "block" }.Concat(results.SelectMany(m => new[] { $"{m.Model} cosine", $"{m.Model} correlation" })).ToArray();
        sb.Append(Table(header,
            Enumerable.Range(0, depth).Select(b => (IReadOnlyList<string>)new[] { b.ToString() }
                .Concat(results.SelectMany(m => b < m.PerBlock.Length
                    ? new[] { F(m.PerBlock[b]) + (m.Kinds[b] == "S" ? " (S)" : ""), F(m.PatternPerBlock[b]) }
                    : new[] { "", "" })).ToArray())));
        static double Mean(double[] v) => v.Where(double.IsFinite).DefaultIfEmpty(double.NaN).Average();
        sb.Append("| mean |").Append(string.Join("", results.Select(m => $" {F(Mean(m.PerBlock))} | {F(Mean(m.PatternPerBlock))} |"))).Append('\n');
        AtomicFile.WriteAllText(Out("redundancy.md"), sb.ToString());
        Plots.Redundancy(results).SavePng(Out("redundancy.png"));
        return report;
    }
}
