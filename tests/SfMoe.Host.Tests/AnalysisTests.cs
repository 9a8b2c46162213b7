using SfMoe.Analysis;
using SfMoe.Core;
using SfMoe.Data;
using SfMoe.Imaging;
using SkiaSharp;
using TorchSharp;

namespace SfMoe.Host.Tests;

/// <summary>The analysis API on hand-made inputs with known answers, and on small untrained models.</summary>
public class AnalysisTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sfmoe-analysis-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static void Near(IEnumerable<double> expected, IEnumerable<double> actual)
    {
        var (e, a) = (expected.ToArray(), actual.ToArray());
        Assert.Equal(e.Length, a.Length);
        for (int i = 0; i < e.Length; i++) Assert.Equal(e[i], a[i], 12);
    }

    // One image, two tokens, top-2 of three experts:
    //   token 0: p = (0.5, 0.3, 0.2), choices (0, 1), only the first processed
    //   token 1: p = (0.1, 0.1, 0.8), choices (2, 0), both dropped
    static RoutingData HandMade() => new(block: 3, batch: 1, tokens: 2, topK: 2, numExperts: 3,
        index: [0, 1, 2, 0], kept: [true, false, false, false], probs: [0.5f, 0.3f, 0.2f, 0.1f, 0.1f, 0.8f], capacity: 5);

    [Fact]
    public void RoutingStatisticsOfAHandMadeRecord()
    {
        var s = new RoutingStatistics(3, 3, 2, ["d0", "d1"], ["c0", "c1", "c2"]);
        s.Add(HandMade(), domains: [1], labels: [2]);
        Assert.Equal(new[] { 0.5, 0, 0.5 }, s.Top1Load);
        Assert.Equal(new[] { 0.5, 0.25, 0.25 }, s.TopKLoad);
        Assert.Equal(new[] { 1.0, 0, 0 }, s.ProcessedLoad);
        Assert.Equal(0.5, s.DroppedTokenFraction, 12);
        double h0 = -(0.5 * Math.Log(0.5) + 0.3 * Math.Log(0.3) + 0.2 * Math.Log(0.2));
        double h1 = -(2 * 0.1 * Math.Log(0.1) + 0.8 * Math.Log(0.8));
        Assert.Equal((h0 + h1) / 2, s.RouterEntropy, 6);
        Assert.Equal((h0 + h1) / 2 / Math.Log(3), s.NormalizedEntropy, 6);
        Assert.Equal((0.2 + 0.7) / 2, s.Top1Margin, 6);
        Assert.Equal(5, s.Capacity);
        var dom = s.UsageByDomain;
        Assert.Equal(new[] { 0.0, 0, 0, 0.5, 0, 0.5 }, new[] { dom[0, 0], dom[0, 1], dom[0, 2], dom[1, 0], dom[1, 1], dom[1, 2] });
        var cls = s.UsageByClass;
        Assert.Equal(0.5, cls[2, 0]);
        Assert.Equal(0.0, cls[0, 0]);

        // a second batch accumulates: a token routed to e1 alone, kept
        s.Add(new RoutingData(3, 1, 1, 2, 3, [1, 2], [true, true], [0.2f, 0.6f, 0.2f]), domains: [0], labels: [0]);
        Near([1 / 3.0, 1 / 3.0, 1 / 3.0], s.Top1Load);
        Assert.Equal(1 / 3.0, s.DroppedTokenFraction, 12);
        Assert.Equal(3, s.Tokens);
        Assert.Equal(2, s.Images);
    }

    [Fact]
    public void RoutingDataChecksItsShapes()
    {
        Assert.Throws<ArgumentException>(() => new RoutingData(0, 1, 2, 2, 3, [0, 1, 2], [true, true, true, true], new float[6]));
        Assert.Throws<ArgumentException>(() => new RoutingData(0, 1, 1, 1, 3, [3], [true], new float[3]));
    }

    [Fact]
    public void NearestNinePatchesInsideAndAtACorner()
    {
        var g = new PatchGrid(4, 4, 8, 8);   // a 32x32 input of 8-pixel patches
        Assert.Equal((1, 2), g.Of(6));
        Assert.Equal((20.0, 12.0), g.Center(6));
        // the centre of patch (1, 1): its 3x3 neighbourhood
        Assert.Equal(new[] { 0, 1, 2, 4, 5, 6, 8, 9, 10 }, g.Nearest(12, 12, 9).Order());
        Assert.Equal(5, g.Nearest(12, 12, 9)[0]);
        // the top-left corner: distances^2 32, 160, 160, 288, 416, 416, 544, 544, then a tie at 800 between patches 3, 10
        // and 12, which goes to the lowest index
        Assert.Equal(new[] { 0, 1, 4, 5, 2, 8, 6, 9, 3 }, g.Nearest(0, 0, 9));
    }

    [Fact]
    public void AttributeHistogramCountsTheNearestPatchesTopOneExperts()
    {
        var g = new PatchGrid(4, 4, 8, 8);
        var top1 = Enumerable.Range(0, 16).Select(i => i % 4).ToArray();   // a fake routing: expert = patch column
        var h = new AttributeHistogram(4, ["beak", "tail"]);
        // a keypoint at (24, 24) of a 64x64 stored image is (12, 12) at the model's 32x32 input: patch (1, 1)
        var (x, y) = AttributeHistogram.ToModelInput(24, 24, 64, 64, 32, 32);
        Assert.Equal((12.0, 12.0), (x, y));
        h.AddKeypoint("beak", x, y, top1, g);                  // columns 0, 1, 2 three times each
        h.AddKeypoint("wing", 31, 0, top1, g, patches: 1);     // the top-right patch: column 3
        h.AddKeypoint("wing", 31, 31, top1, g, patches: 1);
        Assert.Equal(new[] { "beak", "tail", "wing" }, h.Attributes);
        Assert.Equal(new[] { 1, 0, 2 }, h.KeypointCounts);
        var c = h.Counts;
        Assert.Equal(new[] { 3.0, 3, 3, 0 }, Enumerable.Range(0, 4).Select(e => c[0, e]));
        Assert.Equal(new[] { 0.0, 0, 0, 2 }, Enumerable.Range(0, 4).Select(e => c[2, e]));
        var n = h.Normalized;
        Near([1 / 3.0, 1 / 3.0, 1 / 3.0, 0], Enumerable.Range(0, 4).Select(e => n[0, e]));
        Assert.Equal(new[] { 0.0, 0, 0, 0 }, Enumerable.Range(0, 4).Select(e => n[1, e]));   // never seen: a zero row
        Assert.Equal(1.0, n[2, 3]);
    }

    [Fact]
    public void HeadRedundancyIsOneForIdenticalHeadsAndZeroForDisjointOnes()
    {
        float[] a = [0.1f, 0.2f, 0.7f, 0], b = [0, 0, 0, 1];
        Assert.Equal(1.0, AttentionMaps.Redundancy([a, a, a]), 6);
        Assert.Equal(0.0, AttentionMaps.Redundancy([b, [0.5f, 0.5f, 0, 0]]), 12);
        Assert.Equal(1 / 3.0, AttentionMaps.Redundancy([b, b, [1, 0, 0, 0]]), 12);
        Assert.True(double.IsNaN(AttentionMaps.Redundancy([a])));
        Assert.Equal(1.0, AttentionMaps.Similarity(a, a.Select(v => 3 * v).ToArray()), 6);   // scale does not matter
        // the pattern score ignores a uniform floor: two heads peaking on different patches of a diffuse map
        float[] p = [0.3f, 0.2f, 0.25f, 0.25f], q = [0.2f, 0.3f, 0.25f, 0.25f];
        Assert.True(AttentionMaps.Similarity(p, q) > 0.9);
        Assert.Equal(-1.0, AttentionMaps.Correlation(p, q), 6);
        Assert.Equal(1.0, AttentionMaps.PatternRedundancy([p, p.Select(v => v + 1).ToArray()]), 6);
        Assert.Equal(1.0, AttentionMaps.Correlation([0.25f, 0.25f], [0.5f, 0.5f]));   // two flat maps: the same pattern
        Assert.Equal(0.0, AttentionMaps.Correlation([0.25f, 0.25f], [0.1f, 0.9f]));
    }

    [Fact]
    public void DinoThresholdKeepsTheSmallestSetHoldingTheMass()
    {
        float[] m = [0.1f, 0.4f, 0.2f, 0.3f];
        Assert.Equal(new[] { false, true, false, true }, AttentionMaps.ThresholdMask(m, 0.6));   // 0.4 + 0.3
        Assert.Equal(new[] { false, true, false, false }, AttentionMaps.ThresholdMask(m, 0.35));
        Assert.Equal(new[] { true, true, true, true }, AttentionMaps.ThresholdMask(m, 1.0));
        Assert.Equal(new[] { false, false, false, false }, AttentionMaps.ThresholdMask(m, 0.0));
        var rng = new Random(7);
        for (int trial = 0; trial < 200; trial++)
        {
            var map = Enumerable.Range(0, 1 + rng.Next(30)).Select(_ => (float)rng.NextDouble()).ToArray();
            double t = rng.NextDouble(), total = map.Sum(v => (double)v);
            var keep = AttentionMaps.ThresholdMask(map, t);
            var kept = map.Where((_, i) => keep[i]).Select(v => (double)v).ToArray();
            Assert.True(kept.Sum() >= t * total - 1e-9, "kept mass >= threshold");
            if (kept.Length > 0) Assert.True(kept.Sum() - kept.Min() < t * total, "minimal: without its smallest patch the set holds less");
            if (kept.Length > 0) Assert.True(kept.Min() >= map.Where((_, i) => !keep[i]).DefaultIfEmpty(0).Max(), "the largest values are kept");
        }
    }

    [Fact]
    public void CurvesReaderReadsAResultsFile()
    {
        var dir = Path.Combine(_dir, "run");
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "results.jsonl");
        File.WriteAllLines(path,
        [
            """{"args":{"dataset":"Synthetic","algorithm":"SFMoE","test_envs":[0]},"step":0,"loss":2.0,"aux_loss":0.04,"env0_in_acc":0.1,"env0_out_acc":0.2,"env1_in_acc":0.3,"env1_out_acc":0.4,"routing":{"blocks.1":{"load":[0.5,0.5],"dropped_token_fraction":0.25}}}""",
            """{"args":{"dataset":"Synthetic","algorithm":"SFMoE","test_envs":[0]},"step":100,"loss":1.5,"aux_loss":0.02,"env0_in_acc":0.5,"env0_out_acc":0.6,"env1_in_acc":0.7,"env1_out_acc":0.8}""",
            """{"step":200,"loss":1.""",   // a killed run's truncated last line
        ]);
        var c = TrainingCurves.Read(path);
        Assert.Equal("run", c.Name);
        Assert.Equal("Synthetic", c.Dataset);
        Assert.Equal("SFMoE", c.Algorithm);
        Assert.Equal(new[] { 0 }, c.TestEnvs);
        Assert.Equal(new[] { 0.0, 100 }, c.Steps);
        Assert.Equal(new[] { 2.0, 1.5 }, c.Loss);
        Assert.Equal(new[] { 0.04, 0.02 }, c.AuxLoss);
        Assert.Equal(new[] { "env0_in_acc", "env0_out_acc", "env1_in_acc", "env1_out_acc" }, c.Accuracy.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(new[] { 0.1, 0.5 }, c.Accuracy["env0_in_acc"]);
        Assert.Equal(new[] { 0, 1 }, c.Environments);
        Assert.Equal(new[] { 0.1, 0.5 }, c.TestAccuracy);
        Assert.Equal(new[] { 0.4, 0.8 }, c.ValidationAccuracy);
        Assert.Equal(new[] { 0.5, 0.5 }, c.ExpertLoad["blocks.1"][0]);
        Assert.Null(c.ExpertLoad["blocks.1"][1]);
        Assert.Equal(0.25, c.DroppedTokens["blocks.1"][0]);
        Assert.True(double.IsNaN(c.DroppedTokens["blocks.1"][1]));

        var files = CurvesReport.Run(_dir, Path.Combine(_dir, "plots"));
        Assert.Equal(new[] { "curves_compare.png", "curves_run.png" }, files.Select(Path.GetFileName).Order(StringComparer.Ordinal));

        File.AppendAllText(path, "\n{\"step\": 300}\n");   // now the bad line is not the last: an error naming it
        var e = Assert.ThrowsAny<SfMoeException>(() => TrainingCurves.Read(path));
        Assert.Contains("results.jsonl:3", e.Message);
    }

    [Fact]
    public void ProfileEqualsSummaryTableAndTheDenseTwins()
    {
        var cfg = Registry.tryCreate("sfmoe_test_patch8_32").ResultValue;
        var p = ModelProfiler.Describe("sfmoe_test_patch8_32");
        var table = Summary.table(cfg).ToArray();
        Assert.Equal(table.Select(t => (t.Item1, t.Item2, t.Item3, t.Item4, t.Item5)),
                     p.Model.Parts.Select(x => (x.Name, x.Kind, x.Parameters, x.ActiveParameters, x.Macs)));
        Assert.Equal(Summary.totalParams(cfg), p.Model.TotalParameters);
        var twin = ((Config.Architecture.VitArch)ModelSpec.resolve(ModelSpec.Create(ModelSpec.Source.NewNamed("sfmoe_test_patch8_32"), "Fx4", null, null, null))).Item;
        Assert.Equal(Summary.table(twin).Sum(t => t.Item5), p.DenseTwin.TotalMacs);
        Assert.Equal(Summary.totalParams(twin), p.DenseTwin.TotalParameters);
        Assert.Equal("Fx4", p.DenseTwin.Pattern);
        Assert.All(p.DenseTwin.Parts, x => Assert.NotEqual("S", x.Kind));
        // the sparse blocks differ by the router and the extra expert per token, nothing else
        var d = (long)cfg.EmbedDim; long h = Config.VitConfigModule.hidden(cfg), n = Config.VitConfigModule.numTokens(cfg);
        Assert.Equal(2 * (n * d * 4 + n * 2 * d * h), p.Model.TotalMacs - p.DenseTwin.TotalMacs);
        // a model built from the registry has the parameters the profile states
        using var m = SfMoeModel.Create("sfmoe_test_patch8_32");
        Assert.Equal(m.ParameterCount, p.Model.TotalParameters);

        var measured = ModelProfiler.Profile("sfmoe_test_patch8_32", batchSize: 2, warmup: 1, repeats: 1);
        Assert.Equal(p.Model.Parts, measured.Model.Parts);
        foreach (var t in new[] { measured.Model.Timings!, measured.DenseTwin.Timings! })
        {
            Assert.True(t.ForwardMs > 0 && t.TrainStepMs > 0, "timings");
            Assert.True(t.PeakMemoryGb > 0 && t.PeakMemoryGb >= t.BaselineMemoryGb - 0.01, "peak memory");
        }
        Assert.ThrowsAny<SfMoeException>(() => ModelProfiler.Describe("no_such_model"));
    }

    [Fact]
    public void KeypointFilesParseFindAndReportErrors()
    {
        var k = KeypointFile.Parse("""{"001.Albatross/a_1.jpg": {"_size": [500, 400], "beak": [10, 20.5]}, "env/x/b.png": {"tail": [1, 2]}}""");
        var a = k.Find("/data/CUB_DG/Candy/001.Albatross/a_1.jpg")!;
        Assert.Equal((500, 400), (a.Width!.Value, a.Height!.Value));
        Assert.Equal(new Keypoint("beak", 10, 20.5f), a.Points.Single());
        Assert.NotNull(k.Find("root/env/x/b.png"));
        Assert.Null(k.Find("root/other/x/b.png"));   // a longer key must match as a whole
        var path = Path.Combine(_dir, "k.json");
        k.Save(path);
        Assert.Equal(2, KeypointFile.Load(path).Images.Count);
        Assert.Contains("\"beak\": expected [x, y]", Assert.ThrowsAny<SfMoeException>(() => KeypointFile.Parse("""{"a.jpg": {"beak": [1]}}""")).Message);
        Assert.Contains("not valid JSON", Assert.ThrowsAny<SfMoeException>(() => KeypointFile.Parse("{")).Message);
    }

    [Fact]
    public void CubPartLocationsConvertToKeypoints()
    {
        var cub = Path.Combine(_dir, "CUB_200_2011");
        Directory.CreateDirectory(Path.Combine(cub, "parts"));
        Directory.CreateDirectory(Path.Combine(cub, "images", "001.Albatross"));
        File.WriteAllText(Path.Combine(cub, "images.txt"), "1 001.Albatross/a_1.jpg\n2 001.Albatross/a_2.jpg\n");
        File.WriteAllText(Path.Combine(cub, "parts", "parts.txt"), "1 back\n2 left eye\n");
        File.WriteAllText(Path.Combine(cub, "parts", "part_locs.txt"), "1 1 10.0 20.0 1\n1 2 0.0 0.0 0\n2 1 5.5 6.5 1\n2 2 7.0 8.0 1\n");
        ImageFiles.WritePng(new ImageU8(30, 40, 3, new byte[30 * 40 * 3]), Path.Combine(cub, "images", "001.Albatross", "a_1.jpg"));
        var k = KeypointFile.FromCub(cub);
        var a1 = k.Images["001.Albatross/a_1.jpg"];
        Assert.Equal(new[] { new Keypoint("back", 10, 20) }, a1.Points);   // the invisible eye is left out
        Assert.Equal((40, 30), (a1.Width!.Value, a1.Height!.Value));       // from the image's header
        var a2 = k.Images["001.Albatross/a_2.jpg"];
        Assert.Equal(new[] { "back", "left eye" }, a2.Points.Select(p => p.Part));
        Assert.Null(a2.Width);                                             // no image file: no size
    }

    [Fact]
    public void PlotsDrawTextWithTheBundledFont()
    {
        var values = new double[,] { { 0.1, 0.9 }, { 0.5, 0.5 } };
        var png = Plots.Heatmap(values, ["row a", "row b"], ["e0", "e1"], "A TITLE", "expert", "attribute", "fraction").ToPng();
        using var bmp = SKBitmap.Decode(png);
        Assert.True(bmp.Width >= 520 && bmp.Height >= 300);
        // the title band (top 30 rows, middle third) holds dark text pixels: fonts were found
        int dark = 0;
        for (int y = 0; y < 30; y++)
            for (int x = bmp.Width / 3; x < 2 * bmp.Width / 3; x++)
                if (bmp.GetPixel(x, y).Red < 100) dark++;
        Assert.True(dark > 30, $"title text drawn ({dark} dark pixels)");
        Assert.Equal(PlotStyle.FontName, ScottPlot.Fonts.Default);
    }

    static ImageU8[] SyntheticImages(int n) => Enumerable.Range(0, n).Select(i => new SyntheticDataset(new SyntheticOptions { ImagesPerEnvironment = 8 }).Render(i % 4, i)).ToArray();

    [Fact]
    public void ProbeReturnsRoutingAndClsAttentionDeterministically()
    {
        using var model = SfMoeModel.Create("sfmoe_test_patch8_32", new ModelOptions { NumClasses = 7, Seed = 0 });
        var probe = ModelProbe.FromModel(model, "untrained");
        Assert.Equal(new PatchGrid(4, 4, 8, 8), probe.Grid);
        Assert.Equal(2, probe.PrefixTokens);
        Assert.Equal(new[] { 1, 3 }, probe.SparseBlocks);
        var images = SyntheticImages(3);
        var r = probe.Probe(images, attention: true, routing: true);
        Assert.Equal(3, r.Batch);
        Assert.Equal(4, r.ClsAttention.Count);
        Assert.Equal(16, r.Patches);
        for (int b = 0; b < 3; b++)
            for (int h = 0; h < r.Heads; h++)
            {
                var m = r.ClsMap(3, b, h);
                Assert.InRange(m.Sum(), 0.01, 1.0 + 1e-5);   // the CLS row over the patch keys (prefix keys excluded)
            }
        Assert.Equal(new[] { 1, 3 }, r.Routing.Select(x => x.Block));
        var rt = r.Routing[0];
        Assert.Equal((3, 18, 2, 4), (rt.Batch, rt.Tokens, rt.TopK, rt.NumExperts));
        Assert.Equal(Enumerable.Range(0, 16).Select(i => rt.Top1(1, 2 + i)), rt.PatchTop1(1, 2));
        var again = probe.Probe(images, attention: true, routing: true);
        Assert.Equal(rt.Index, again.Routing[0].Index);   // the random second expert comes from the seeded generator
        Assert.Equal(rt.Kept, again.Routing[0].Kept);
        Assert.Equal(r.ClsAttention[2], again.ClsAttention[2]);

        // the statistics of the model's own records: processed choices per expert = the record's load
        using var x = torch.randn(2, 3, 32, 32);
        using var o = model.Run(x, returnRouting: true, generator: new TorchSharp.torch.Generator(0));
        var data = RoutingData.FromRecord(o.Routing[0]);
        var s = new RoutingStatistics(1, 4, 2, [], []);
        s.Add(data);
        Assert.Equal(o.Routing[0].Load.data<long>().ToArray().Select(v => (double)v), s.ProcessedCounts);
    }

    [Fact]
    public void AttributeReportOnSyntheticCountsItsRealKeypoints()
    {
        using var model = SfMoeModel.Create("sfmoe_test_patch8_32", new ModelOptions { NumClasses = 7, Seed = 0 });
        var probe = ModelProbe.FromModel(model, "untrained", SyntheticDataset.Classes);
        var ds = new SyntheticDataset(new SyntheticOptions { ImagesPerEnvironment = 20 });
        var o = new AttributeReportOptions { Checkpoint = "(in memory)", OutputDir = Path.Combine(_dir, "attr"), MaxImages = 5, BatchSize = 4 };
        var r = AttributeReport.Run(probe, ds, null, o);
        var samples = AnalysisSamples.Select(ds, "in", 5);
        // every keypoint inside the image counts (shapes can reach past the border)
        int expected = samples.Sum(s => ds.Keypoints(s.Env, s.Index).Count(k => k.X >= 0 && k.Y >= 0 && k.X <= 64 && k.Y <= 64));
        Assert.Equal(20, r.Images);
        Assert.Equal(expected, r.KeypointCount);
        var h = r.Blocks[0].Histogram;
        Assert.Equal("arrow/center", h.Attributes[0]);
        Assert.Equal("background", h.Attributes[^1]);
        Assert.Equal(2 * 20, h.KeypointCounts[^1]);   // two background points per image
        Assert.Equal(expected, h.KeypointCounts.Sum());
        var counts = h.Counts;
        Assert.Equal(9.0 * expected, Enumerable.Range(0, h.Attributes.Count).Sum(a => Enumerable.Range(0, 4).Sum(e => counts[a, e])));
        foreach (var f in new[] { "attributes.json", "attributes.md", "attributes_block1.png", "attributes_block3.png" })
            Assert.True(File.Exists(Path.Combine(o.OutputDir, f)), f);
        Assert.ThrowsAny<SfMoeException>(() => AttributeReport.Run(probe, new ToyDataset(), null, o));   // no keypoints: a clear error
    }
}
