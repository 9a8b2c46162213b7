using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using SfMoe.Data;
using SfMoe.Imaging;
using static SfMoe.Analysis.ReportText;

namespace SfMoe.Analysis;

/// <summary>
/// What the dataset analyses (<see cref="RoutingReport"/>, <see cref="AttributeReport"/>) share: the model file, which
/// images of which dataset, batching, seeds, device and output folder.
/// </summary>
public abstract class DatasetAnalysisOptions
{
    /// <summary>The model file.</summary>
    public required string Checkpoint { get; set; }
    /// <summary>Dataset name or folder (default: the one the model was trained on).</summary>
    public string? Dataset { get; set; }
    /// <summary>Folder holding the datasets.</summary>
    public string? DataDir { get; set; }
    /// <summary>"in" (default: the 80% DomainBed trains on), "out" or "all".</summary>
    public string Split { get; set; } = "in";
    /// <summary>Images per environment (default 200).</summary>
    public int MaxImages { get; set; } = 200;
    /// <summary>Images per forward pass (default 32).</summary>
    public int BatchSize { get; set; } = 32;
    /// <summary>Seed of the in/out splits (default 0).</summary>
    public int TrialSeed { get; set; }
    /// <summary>Seed of the model's random choices, e.g. the random second expert (default 0).</summary>
    public long Seed { get; set; }
    /// <summary>Where the files go.</summary>
    public required string OutputDir { get; set; }
    /// <summary>cpu (default) or cuda.</summary>
    public string Device { get; set; } = "cpu";
}

/// <summary>Settings of <see cref="RoutingReport.Run(RoutingReportOptions, Action{string}?)"/> (<c>sfmoe analyze routing</c>).</summary>
public sealed class RoutingReportOptions : DatasetAnalysisOptions
{
    /// <summary>Images per environment drawn as expert maps (default 2).</summary>
    public int Samples { get; set; } = 2;
}

/// <summary>
/// Routing analytics of a model on a dataset: per sparse block, expert load (top-1, top-k, processed), dropped tokens,
/// router entropy and top-1 margin, usage per domain and per class, and per-patch expert maps of sample images.
/// Files: <c>routing.json</c>, <c>routing.md</c>, <c>load.png</c>, <c>usage_domain_block{b}.png</c>,
/// <c>usage_class_block{b}.png</c>, <c>expert_map_{env}_{index}.png</c>.
/// </summary>
public sealed class RoutingReport
{
    RoutingReport(string model, string dataset, int images, IReadOnlyList<RoutingStatistics> blocks, IReadOnlyList<string> files)
    { Model = model; Dataset = dataset; Images = images; Blocks = blocks; Files = files; }

    /// <summary>The model's name.</summary>
    public string Model { get; }
    /// <summary>The dataset's name.</summary>
    public string Dataset { get; }
    /// <summary>Images analysed.</summary>
    public int Images { get; }
    /// <summary>Statistics per sparse block.</summary>
    public IReadOnlyList<RoutingStatistics> Blocks { get; }
    /// <summary>The files written.</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>Opens the model and dataset, analyses and writes the files.</summary>
    public static RoutingReport Run(RoutingReportOptions o, Action<string>? log = null)
    {
        using var probe = ModelProbe.Load(o.Checkpoint, o.Device, o.Seed);
        var name = o.Dataset ?? probe.Dataset ?? throw new ConfigException($"{o.Checkpoint}: the model file names no dataset; pass --dataset");
        var ds = Datasets.Open(name, o.DataDir, ImageCodec.Decode);
        return Run(probe, ds, o, log);
    }

    /// <summary>Analyses an opened model on an opened dataset and writes the files.</summary>
    public static RoutingReport Run(ModelProbe probe, IMultiDomainDataset ds, RoutingReportOptions o, Action<string>? log = null)
    {
        if (probe.SparseBlocks.Count == 0) throw new ConfigException($"{probe.Name} ({probe.Pattern}) has no sparse blocks: there is no routing to analyse");
        if (ds.Spec.Classes.Count != probe.ClassNames.Count)
            log?.Invoke($"note: the model has {probe.ClassNames.Count} classes, {ds.Spec.Name} has {ds.Spec.Classes.Count}");
        var samples = AnalysisSamples.Select(ds, o.Split, o.MaxImages, o.TrialSeed);
        var stats = probe.SparseBlocks.Select(b => new RoutingStatistics(b, probe.NumExperts, probe.TopK, ds.Spec.Environments, ds.Spec.Classes)).ToArray();
        var mapSamples = samples.GroupBy(s => s.Env).SelectMany(g => g.Take(o.Samples)).ToHashSet();
        var maps = new List<(SampleRef S, ImageU8 Image, int[][] Top1)>();
        Directory.CreateDirectory(o.OutputDir);
        int n = AnalysisSamples.ForEachBatch(probe, ds, samples, o.BatchSize, attention: false, routing: true, (refs, images, r) =>
        {
            var envs = refs.Select(s => s.Env).ToArray();
            var labels = refs.Select(s => s.Label).ToArray();
            for (int k = 0; k < stats.Length; k++) stats[k].Add(r.Routing[k], envs, labels);
            for (int i = 0; i < refs.Count; i++)
                if (mapSamples.Contains(refs[i]))
                    maps.Add((refs[i], images[i], r.Routing.Select(x => x.PatchTop1(i, probe.PrefixTokens)).ToArray()));
        }, log);
        if (n == 0) throw new ConfigException($"{ds.Spec.Name}: no readable images in the {o.Split} split");
        log?.Invoke($"{n} images, {stats[0].Tokens} tokens per sparse block");

        var files = new List<string>();
        string Out(string f) { var p = Path.Combine(o.OutputDir, f); files.Add(p); return p; }
        var report = new RoutingReport(probe.Name, ds.Spec.Name, n, stats, files);
        AtomicFile.WriteAllText(Out("routing.json"), report.ToJson(probe, o).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        AtomicFile.WriteAllText(Out("routing.md"), report.ToMarkdown(probe, o));
        new Figure(stats.Select(Plots.LoadBars).ToArray(), Math.Min(2, stats.Length), 640, 420, $"expert load: {probe.Name} on {ds.Spec.Name} ({o.Split} split, {n} images)")
            .SavePng(Out("load.png"));
        var experts = Enumerable.Range(0, probe.NumExperts).Select(e => $"e{e}").ToArray();
        foreach (var s in stats)
        {
            Plots.Heatmap(s.UsageByDomain, ds.Spec.Environments, experts, $"{probe.Name}, blocks.{s.Block}: top-1 expert usage per domain", "expert", "domain", "fraction of the domain's tokens")
                .SavePng(Out($"usage_domain_block{s.Block}.png"));
            Plots.Heatmap(s.UsageByClass, ds.Spec.Classes, experts, $"{probe.Name}, blocks.{s.Block}: top-1 expert usage per class", "expert", "class", "fraction of the class's tokens")
                .SavePng(Out($"usage_class_block{s.Block}.png"));
        }
        foreach (var (s, img, top1) in maps)
        {
            var env = ds.Spec.Environments[s.Env];
            var cls = s.Label < ds.Spec.Classes.Count ? ds.Spec.Classes[s.Label] : $"class{s.Label}";
            Plots.ExpertMap(img, stats.Select((st, k) => ($"blocks.{st.Block}: top-1 expert", top1[k])).ToArray(), probe.Grid, probe.NumExperts,
                    $"{probe.Name}: {env} #{s.Index} ({cls}), {probe.Grid.Rows}x{probe.Grid.Cols} patches")
                .SavePng(Out($"expert_map_{Safe(env)}_{s.Index}.png"));
        }
        return report;
    }

    static JsonArray Arr(IEnumerable<double> v) => new(v.Select(x => (JsonNode?)JsonValue.Create(Math.Round(x, 6))).ToArray());

    JsonObject ToJson(ModelProbe probe, RoutingReportOptions o)
    {
        JsonObject Table(double[,] m, IReadOnlyList<string> rows)
        {
            var t = new JsonObject();
            var r = Rows(m);
            for (int i = 0; i < rows.Count; i++) t[rows[i]] = Arr(r[i]);
            return t;
        }
        return new JsonObject
        {
            ["model"] = Model,
            ["checkpoint"] = o.Checkpoint,
            ["pattern"] = probe.Pattern,
            ["dataset"] = Dataset,
            ["split"] = o.Split,
            ["trial_seed"] = o.TrialSeed,
            ["seed"] = o.Seed,
            ["images"] = Images,
            ["tokens_per_image"] = probe.PrefixTokens + probe.Grid.Count,
            ["grid"] = new JsonArray(probe.Grid.Rows, probe.Grid.Cols),
            ["num_experts"] = probe.NumExperts,
            ["top_k"] = probe.TopK,
            ["blocks"] = new JsonArray(Blocks.Select(s => (JsonNode)new JsonObject
            {
                ["block"] = s.Block,
                ["capacity"] = s.Capacity,
                ["tokens"] = s.Tokens,
                ["top1_load"] = Arr(s.Top1Load),
                ["topk_load"] = Arr(s.TopKLoad),
                ["processed_load"] = Arr(s.ProcessedLoad),
                ["dropped_token_fraction"] = Math.Round(s.DroppedTokenFraction, 6),
                ["router_entropy"] = Math.Round(s.RouterEntropy, 6),
                ["router_entropy_normalized"] = Math.Round(s.NormalizedEntropy, 6),
                ["top1_margin"] = Math.Round(s.Top1Margin, 6),
                ["usage_by_domain"] = Table(s.UsageByDomain, s.Domains),
                ["usage_by_class"] = Table(s.UsageByClass, s.Classes),
            }).ToArray()),
        };
    }

    string ToMarkdown(ModelProbe probe, RoutingReportOptions o)
    {
        var sb = new StringBuilder();
        sb.Append($"# Routing: {Model} on {Dataset}\n\n");
        sb.Append($"Pattern `{probe.Pattern}`, E = {probe.NumExperts}, top-{probe.TopK}; {Images} images ({o.Split} split, at most {o.MaxImages} per environment), ");
        sb.Append($"{probe.PrefixTokens + probe.Grid.Count} tokens each ({probe.Grid.Rows}x{probe.Grid.Cols} patches + {probe.PrefixTokens} prefix); seed {o.Seed}.\n\n");
        sb.Append("Loads are fractions: top-1 = tokens whose router top-1 is the expert; top-k = all k choices; processed = choices that passed the second-expert policy and capacity. ");
        sb.Append("Entropy in nats (normalised: divided by ln E); margin = mean (largest - second-largest) router probability.\n\n");
        var experts = Enumerable.Range(0, probe.NumExperts).Select(e => $"e{e}").ToArray();
        sb.Append(Table(new[] { "block", "dropped tokens", "entropy", "entropy / ln E", "top-1 margin", "capacity" },
            Blocks.Select(s => (IReadOnlyList<string>)new[] { $"blocks.{s.Block}", F(s.DroppedTokenFraction), F(s.RouterEntropy), F(s.NormalizedEntropy), F(s.Top1Margin), s.Capacity < 0 ? "dropless" : s.Capacity.ToString() })));
        foreach (var s in Blocks)
        {
            sb.Append($"\n## blocks.{s.Block}\n\n");
            sb.Append(Table(new[] { "load" }.Concat(experts).ToArray(), new[]
            {
                (IReadOnlyList<string>)new[] { "top-1" }.Concat(s.Top1Load.Select(v => F(v))).ToArray(),
                new[] { $"top-{s.TopK}" }.Concat(s.TopKLoad.Select(v => F(v))).ToArray(),
                new[] { "processed" }.Concat(s.ProcessedLoad.Select(v => F(v))).ToArray(),
            }));
            sb.Append("\nTop-1 usage per domain:\n\n");
            sb.Append(Table(new[] { "domain" }.Concat(experts).ToArray(), Rows(s.UsageByDomain).Select((r, i) => (IReadOnlyList<string>)new[] { s.Domains[i] }.Concat(r.Select(v => F(v))).ToArray())));
            sb.Append("\nTop-1 usage per class:\n\n");
            sb.Append(Table(new[] { "class" }.Concat(experts).ToArray(), Rows(s.UsageByClass).Select((r, i) => (IReadOnlyList<string>)new[] { s.Classes[i] }.Concat(r.Select(v => F(v))).ToArray())));
        }
        return sb.ToString();
    }
}
