using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using SfMoe.Data;
using SfMoe.Imaging;
using static SfMoe.Analysis.ReportText;

namespace SfMoe.Analysis;

/// <summary>
/// Settings of <see cref="AttributeReport"/> (<c>sfmoe analyze attributes</c>). Without <see cref="ImageRoot"/> the dataset
/// defaults to the model's; with an image folder, <see cref="DatasetAnalysisOptions.MaxImages"/> counts images in all.
/// </summary>
public sealed class AttributeReportOptions : DatasetAnalysisOptions
{
    /// <summary>Keypoint JSON (<see cref="KeypointFile"/>); not needed for datasets with built-in keypoints (Synthetic).</summary>
    public string? Keypoints { get; set; }
    /// <summary>Instead of a dataset: a folder of images, the keys of <see cref="Keypoints"/> being paths under it.</summary>
    public string? ImageRoot { get; set; }
    /// <summary>Patches counted per keypoint (default 9, GMoE's).</summary>
    public int PatchesPerKeypoint { get; set; } = 9;
}

/// <summary>The attribute histogram of one sparse block.</summary>
public sealed record BlockAttributes(int Block, AttributeHistogram Histogram);

/// <summary>
/// Expert vs visual attribute (GMoE §5.4): each keypoint's nearest patches' top-1 experts, accumulated into an attribute x
/// expert histogram per sparse block. Files: <c>attributes.json</c>, <c>attributes.md</c>, <c>attributes_block{b}.png</c>.
/// Attribute names: the part names of the keypoints; for the Synthetic dataset "class/part" (each class has its own
/// parts) and "background" for both background points.
/// </summary>
public sealed class AttributeReport
{
    AttributeReport(string model, string source, int images, int keypoints, IReadOnlyList<BlockAttributes> blocks, IReadOnlyList<string> files)
    { Model = model; Source = source; Images = images; KeypointCount = keypoints; Blocks = blocks; Files = files; }

    /// <summary>The model's name.</summary>
    public string Model { get; }
    /// <summary>Dataset name or image folder.</summary>
    public string Source { get; }
    /// <summary>Images with keypoints analysed.</summary>
    public int Images { get; }
    /// <summary>Keypoints counted.</summary>
    public int KeypointCount { get; }
    /// <summary>The histogram of each sparse block.</summary>
    public IReadOnlyList<BlockAttributes> Blocks { get; }
    /// <summary>Files written.</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>The attribute name of a keypoint of a dataset image (see the class summary).</summary>
    public static string AttributeName(IMultiDomainDataset ds, int label, string part)
    {
        if (ds is not SyntheticDataset) return part;
        if (SyntheticDataset.BackgroundParts.Contains(part)) return "background";
        return $"{SyntheticDataset.Classes[label]}/{part}";
    }

    static IEnumerable<string> KnownAttributes(IMultiDomainDataset ds) =>
        ds is SyntheticDataset
            ? SyntheticDataset.Classes.SelectMany((c, k) => SyntheticDataset.PartNames(k).Where(p => !SyntheticDataset.BackgroundParts.Contains(p)).Select(p => $"{c}/{p}")).Append("background")
            : [];

    /// <summary>Opens the model and the images and keypoints, analyses and writes the files.</summary>
    public static AttributeReport Run(AttributeReportOptions o, Action<string>? log = null)
    {
        using var probe = ModelProbe.Load(o.Checkpoint, o.Device, o.Seed);
        var kp = o.Keypoints is null ? null : KeypointFile.Load(o.Keypoints);
        if (o.ImageRoot is not null)
        {
            if (kp is null) throw new ConfigException("an image folder needs --keypoints (a JSON of image path -> {part: [x, y]})");
            return RunFolder(probe, o.ImageRoot, kp, o, log);
        }
        var name = o.Dataset ?? probe.Dataset ?? throw new ConfigException($"{o.Checkpoint}: the model file names no dataset; pass --dataset or --image-root");
        return Run(probe, Datasets.Open(name, o.DataDir, ImageCodec.Decode), kp, o, log);
    }

    /// <summary>Analyses a dataset: keypoints from <paramref name="keypoints"/> when given, else the dataset's own.</summary>
    public static AttributeReport Run(ModelProbe probe, IMultiDomainDataset ds, KeypointFile? keypoints, AttributeReportOptions o, Action<string>? log = null)
    {
        Check(probe);
        var samples = AnalysisSamples.Select(ds, o.Split, o.MaxImages, o.TrialSeed);
        var found = new Dictionary<SampleRef, ImageKeypoints>();
        foreach (var s in samples)
        {
            var env = ds.Environments[s.Env];
            var k = keypoints is not null ? keypoints.Find(env.SourceOf(s.Index)) : env.KeypointsOf(s.Index) is { } pts ? new ImageKeypoints(pts) : null;
            if (k is not null && k.Points.Count > 0) found[s] = k;
        }
        if (found.Count == 0)
            throw new ConfigException(keypoints is null
                ? $"{ds.Spec.Name} has no built-in keypoints: pass --keypoints FILE (a JSON of image path -> {{part: [x, y]}}; README, section Analysis)"
                : $"no image of {ds.Spec.Name}'s {o.Split} split has keypoints in the keypoints file (keys are matched against the end of each image's path)");
        if (found.Count < samples.Count) log?.Invoke($"{samples.Count - found.Count} of {samples.Count} images have no keypoints and are left out");
        var chosen = samples.Where(found.ContainsKey).ToArray();
        var hists = probe.SparseBlocks.Select(b => (b, new AttributeHistogram(probe.NumExperts, KnownAttributes(ds)))).ToArray();
        int kpCount = 0;
        int n = AnalysisSamples.ForEachBatch(probe, ds, chosen, o.BatchSize, false, true, (refs, images, r) =>
        {
            for (int i = 0; i < refs.Count; i++)
                kpCount += Accumulate(probe, r, i, images[i], found[refs[i]], p => AttributeName(ds, refs[i].Label, p), hists, o.PatchesPerKeypoint);
        }, log);
        return Write(probe, ds.Spec.Name, n, kpCount, hists, o);
    }

    /// <summary>Analyses the images of a folder that the keypoint file names.</summary>
    public static AttributeReport RunFolder(ModelProbe probe, string imageRoot, KeypointFile keypoints, AttributeReportOptions o, Action<string>? log = null)
    {
        Check(probe);
        if (!Directory.Exists(imageRoot)) throw new ConfigException($"image folder {imageRoot} not found");
        var items = keypoints.Images.OrderBy(kv => kv.Key, StringComparer.Ordinal).Take(o.MaxImages).ToArray();
        var hists = probe.SparseBlocks.Select(b => (b, new AttributeHistogram(probe.NumExperts))).ToArray();
        int n = 0, kpCount = 0;
        foreach (var chunk in items.Chunk(o.BatchSize))
        {
            var imgs = new List<(ImageU8 Image, ImageKeypoints K)>();
            foreach (var (key, k) in chunk)
            {
                try { imgs.Add((ImageCodec.Decode(Path.Combine(imageRoot, key)), k)); }
                catch (ImageLoadException e) { log?.Invoke($"skipped {e.Message}"); }
            }
            if (imgs.Count == 0) continue;
            var r = probe.Probe(imgs.Select(t => t.Image).ToArray(), false, true);
            for (int i = 0; i < imgs.Count; i++) kpCount += Accumulate(probe, r, i, imgs[i].Image, imgs[i].K, p => p, hists, o.PatchesPerKeypoint);
            n += imgs.Count;
        }
        if (n == 0) throw new ConfigException($"none of the keypoint file's images could be read under {imageRoot}");
        return Write(probe, imageRoot, n, kpCount, hists, o);
    }

    static void Check(ModelProbe probe)
    {
        if (probe.SparseBlocks.Count == 0) throw new ConfigException($"{probe.Name} ({probe.Pattern}) has no sparse blocks: there are no experts to relate to attributes");
    }

    static int Accumulate(ModelProbe probe, ProbeResult r, int i, ImageU8 image, ImageKeypoints k, Func<string, string> name,
        (int Block, AttributeHistogram H)[] hists, int patches)
    {
        int w = k.Width ?? image.Width, h = k.Height ?? image.Height;
        int count = 0;
        for (int b = 0; b < hists.Length; b++)
        {
            var top1 = r.Routing[b].PatchTop1(i, probe.PrefixTokens);
            foreach (var p in k.Points)
            {
                if (p.X < 0 || p.Y < 0 || p.X > w || p.Y > h) continue;   // outside the image
                var (x, y) = AttributeHistogram.ToModelInput(p.X, p.Y, w, h, probe.ImageSize, probe.ImageSize);
                hists[b].H.AddKeypoint(name(p.Part), x, y, top1, probe.Grid, patches);
                if (b == 0) count++;
            }
        }
        return count;
    }

    static AttributeReport Write(ModelProbe probe, string source, int images, int keypoints, (int Block, AttributeHistogram H)[] hists, AttributeReportOptions o)
    {
        Directory.CreateDirectory(o.OutputDir);
        var files = new List<string>();
        string Out(string f) { var p = Path.Combine(o.OutputDir, f); files.Add(p); return p; }
        var report = new AttributeReport(probe.Name, source, images, keypoints, hists.Select(t => new BlockAttributes(t.Block, t.H)).ToArray(), files);
        var experts = Enumerable.Range(0, probe.NumExperts).Select(e => $"e{e}").ToArray();
        var json = new JsonObject
        {
            ["model"] = probe.Name,
            ["checkpoint"] = o.Checkpoint,
            ["source"] = source,
            ["images"] = images,
            ["keypoints"] = keypoints,
            ["patches_per_keypoint"] = o.PatchesPerKeypoint,
            ["grid"] = new JsonArray(probe.Grid.Rows, probe.Grid.Cols),
            ["num_experts"] = probe.NumExperts,
            ["blocks"] = new JsonArray(hists.Select(t =>
            {
                var rows = Rows(t.H.Counts);
                var norm = Rows(t.H.Normalized);
                var attrs = new JsonObject();
                for (int a = 0; a < t.H.Attributes.Count; a++)
                    attrs[t.H.Attributes[a]] = new JsonObject
                    {
                        ["keypoints"] = t.H.KeypointCounts[a],
                        ["counts"] = new JsonArray(rows[a].Select(v => (JsonNode?)JsonValue.Create(v)).ToArray()),
                        ["normalized"] = new JsonArray(norm[a].Select(v => (JsonNode?)JsonValue.Create(Math.Round(v, 6))).ToArray()),
                    };
                return (JsonNode)new JsonObject { ["block"] = t.Block, ["attributes"] = attrs };
            }).ToArray()),
        };
        AtomicFile.WriteAllText(Out("attributes.json"), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var sb = new StringBuilder();
        sb.Append($"# Expert vs attribute: {probe.Name} on {source}\n\n");
        sb.Append($"{images} images, {keypoints} keypoints; each keypoint counts the top-1 experts of its {o.PatchesPerKeypoint} nearest patches ");
        sb.Append($"({probe.Grid.Rows}x{probe.Grid.Cols} grid). Rows are normalised to sum 1; `n` = keypoints of the attribute.\n");
        foreach (var (block, h) in hists)
        {
            sb.Append($"\n## blocks.{block}\n\n");
            var norm = Rows(h.Normalized);
            sb.Append(Table(new[] { "attribute", "n" }.Concat(experts).ToArray(),
                h.Attributes.Select((a, i) => (IReadOnlyList<string>)new[] { a, h.KeypointCounts[i].ToString() }.Concat(norm[i].Select(v => F(v, "0.00"))).ToArray())));
            Plots.Heatmap(h.Normalized, h.Attributes.Select((a, i) => $"{a} ({h.KeypointCounts[i]})").ToArray(), experts,
                    $"{probe.Name}, blocks.{block}: top-1 expert per attribute ({o.PatchesPerKeypoint} nearest patch{(o.PatchesPerKeypoint == 1 ? "" : "es")} per keypoint)",
                    "expert", "attribute (keypoints)", "fraction of the attribute's patches")
                .SavePng(Out($"attributes_block{block}.png"));
        }
        AtomicFile.WriteAllText(Out("attributes.md"), sb.ToString());
        return report;
    }
}
