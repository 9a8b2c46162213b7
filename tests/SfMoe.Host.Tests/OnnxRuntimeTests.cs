using System.Diagnostics;
using SfMoe.Checkpoints;
using SfMoe.Core;
using SfMoe.Imaging;
using SfMoe.Onnx;
using Microsoft.FSharp.Core;

namespace SfMoe.Host.Tests;

/// <summary>
/// SfMoe.Onnx against the TorchSharp model: the same predictions on real image files (decode, resize, normalise, run),
/// batch prediction, metadata, fixed batches, errors naming the file, the deploy sample and the size of its publish.
/// </summary>
public class OnnxRuntimeTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sfmoe-onnx-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);
    string Out(string name) => Path.Combine(_dir, name);

    static readonly string[] Classes = { "arrow", "circle", "cross", "heart", "square", "star", "triangle" };

    /// <summary>A model file of a registry model (seeded weights); ViT MoE settings replaced by <paramref name="moe"/>.</summary>
    string ModelFileOf(string name, Func<Config.MoeConfig, Config.MoeConfig>? moe = null, int classes = 7, int? inChans = null, int? size = null)
    {
        var arch = ModelSpec.resolve(ModelSpec.Create(ModelSpec.Source.NewNamed(name), null, classes, size, null));
        if (inChans is int c) arch = arch is Config.Architecture.CnnArch cnn
            ? Config.Architecture.NewCnnArch(new Config.CnnConfig(cnn.Item.Kind, c, cnn.Item.NumClasses, cnn.Item.ImgSize)) : arch;
        if (moe is not null && arch is Config.Architecture.VitArch v)
        {
            var vc = v.Item;
            arch = Config.Architecture.NewVitArch(new Config.VitConfig(vc.ImgSize, vc.PatchSize, vc.InChans, vc.EmbedDim, vc.Depth, vc.NumHeads,
                vc.MlpRatio, vc.NumClasses, vc.Distilled, vc.QkvBias, vc.DropRate, vc.AttnDropRate, vc.DropPathRate, vc.NormEps, vc.Pattern,
                moe(vc.Moe), vc.Hybrid));
        }
        var net = Networks.build(arch, Tensors.DdModule.cpu, 5, 0.0);
        using var module = net.Module;
        var chans = Config.ArchitectureModule.inChans(arch);
        var header = new ModelHeader(Config.ArchitectureModule.backbone(arch), ModelSpec.vitJson(arch) is { } j ? j.Value : null,
            classes, chans, Config.ArchitectureModule.imgSize(arch), Classes.Take(classes).ToArray(), "Synthetic", 3, "ERM", "{}",
            chans == 3 ? new[] { 0.485f, 0.456f, 0.406f } : new float[chans], chans == 3 ? new[] { 0.229f, 0.224f, 0.225f } : Enumerable.Repeat(1f, chans).ToArray());
        var path = Out(name + ".safetensors");
        ModelFile.Save(path, net, header);
        return path;
    }

    static Config.MoeConfig Threshold(Config.MoeConfig m) =>
        new(m.NumExperts, m.TopK, m.Router, Config.SecondPolicy.NewSecondThreshold(0.2), m.CapacityTrain, Config.Capacity.NewFactor(1.0),
            m.Scope, m.BatchPrioritized, m.GateNoise, m.AuxLoss, m.AuxLossWeight, m.ExpertBias, m.ExpertDropout);

    /// <summary>Real image files: the image fixtures (PNG, CMYK JPEG, EXIF-rotated JPEG), a greyscale PNG and a photo.</summary>
    string[] Images()
    {
        var grey = Out("grey.png");
        var rng = new Random(3);
        var px = new byte[45 * 61];
        rng.NextBytes(px);
        File.WriteAllBytes(grey, ImageCodec.EncodePng(new ImageU8(45, 61, 1, px)));
        var photo = Out("photo.jpg");
        File.WriteAllBytes(photo, ImageCodec.EncodeJpeg(Data.ImageFixtures.Photo));
        return new[] { "bilevel_37x53.png", "cmyk_37x53.jpg", "exif_orientation6_37x53.jpg" }.Select(Data.ImageFixtures.PathOf)
            .Append(grey).Append(photo).ToArray();
    }

    static void AssertSamePredictions(IReadOnlyList<Prediction> expected, IReadOnlyList<OnnxPrediction> actual, string what)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (int i = 0; i < expected.Count; i++)
        {
            var (e, a) = (expected[i], actual[i]);
            if (e.Index != a.Index) Assert.True(Math.Abs(e.Probability - a.Probability) < 1e-6, $"{what}: rank {i}: {e.Class} vs {a.Class}");
            Assert.True(Math.Abs(e.Probability - a.Probability) <= 1e-4 * Math.Max(e.Probability, 1e-3),
                $"{what}: {e.Class} {e.Probability} vs {a.Class} {a.Probability}");
        }
    }

    public static TheoryData<string> Models => new() { "sfmoe", "gmoe", "mnist_cnn", "deit_distilled" };

    string ModelFor(string kind) => kind switch
    {
        "sfmoe" => ModelFileOf("sfmoe_test_patch8_32", Threshold),
        "gmoe" => ModelFileOf("gmoe_test_patch8_32"),
        "mnist_cnn" => ModelFileOf("mnist_cnn", classes: 3, inChans: 1, size: 28),
        "deit_distilled" => ModelFileOf("deit_test_distilled_patch8_32"),
        _ => throw new ArgumentException(kind),
    };

    [Theory]
    [MemberData(nameof(Models))]
    public void OnnxPredictionsEqualTheTorchSharpModelsOnImageFiles(string kind)
    {
        var file = ModelFor(kind);
        var onnx = Out(kind + ".onnx");
        var r = OnnxExporter.Export(file, onnx);
        Assert.False(r.Stochastic);
        using var torch = TrainedModel.Load(file);
        using var m = OnnxModel.Load(onnx, new OnnxModelOptions { Threads = 2 });
        foreach (var img in Images())
            AssertSamePredictions(torch.Predict(img, 3), m.Predict(img, 3), $"{kind}, {Path.GetFileName(img)}");
    }

    [Fact]
    public void BatchPredictionOfFilesAndDecodedImagesEqualsOneAtATime()
    {
        var onnx = Out("m.onnx");
        OnnxExporter.Export(ModelFileOf("sfmoe_test_patch8_32", Threshold), onnx);
        using var m = OnnxModel.Load(onnx, new OnnxModelOptions { BatchSize = 2 });
        var images = Images();
        var batch = m.PredictBatch(images, top: 7);
        var decoded = m.PredictBatch(images.Select(ImageCodec.Decode).ToList(), top: 7);
        for (int i = 0; i < images.Length; i++)
        {
            var single = m.Predict(images[i], top: 7);
            Assert.Equal(single.Select(p => p.Index), batch[i].Select(p => p.Index));
            Assert.Equal(single.Select(p => p.Index), decoded[i].Select(p => p.Index));
            for (int k = 0; k < 7; k++) Assert.Equal(single[k].Probability, batch[i][k].Probability, 5);
        }
    }

    [Fact]
    public void MetadataCarriesThePreprocessingAndClasses()
    {
        var onnx = Out("m.onnx");
        OnnxExporter.Export(ModelFileOf("sfmoe_test_patch8_32"), onnx);
        using var m = OnnxModel.Load(onnx);
        Assert.Equal("vit", m.Backbone);
        Assert.Equal(Classes, m.ClassNames);
        Assert.Equal((3, 32, 7), (m.Channels, m.ImageSize, m.NumClasses));
        Assert.Equal(new[] { 0.485f, 0.456f, 0.406f }, m.Mean);
        Assert.True(m.Stochastic, "sfmoe_test_patch8_32 has the random second-expert policy");
        Assert.Null(m.FixedBatchSize);
        Assert.Contains("\"pattern\"", m.Metadata["model_config"]);
        var served = OnnxExporter.Export(ModelFileOf("sfmoe_test_patch8_32"), Out("t.onnx"), new OnnxExportOptions { RandomPolicyAsThreshold = true });
        Assert.False(served.Stochastic);
        var mnist = OnnxExporter.Export(ModelFileOf("mnist_cnn", classes: 3, inChans: 1, size: 28), Out("c.onnx"));
        using var c = OnnxModel.Load(mnist.OutputPath);
        Assert.Equal(new[] { 0f }, c.Mean);
        Assert.Equal(new[] { 1f }, c.Std);
    }

    [Fact]
    public void AFixedBatchModelPadsPartialBatchesAndRefusesOtherSizes()
    {
        var file = ModelFileOf("sfmoe_test_patch8_32", Threshold);
        var onnx = OnnxExporter.Export(file, Out("b4.onnx"), new OnnxExportOptions { BatchSize = 4, Opset = 18 }).OutputPath;
        using var m = OnnxModel.Load(onnx);
        Assert.Equal(4L, m.FixedBatchSize);
        using var torch = TrainedModel.Load(file);
        var images = Images();
        var batch = m.PredictBatch(images, top: 2); // 5 images: a full batch and one padded with zero images
        for (int i = 0; i < images.Length; i++) AssertSamePredictions(torch.Predict(images[i], 2), batch[i], images[i]);
        var e = Assert.Throws<OnnxModelException>(() => m.Logits(new float[3 * 32 * 32 * 2], 2));
        Assert.Contains("batches of 4", e.Message);
    }

    [Fact]
    public void BadModelFilesAreErrorsNamingTheFile()
    {
        var missing = Assert.Throws<OnnxModelException>(() => OnnxModel.Load(Out("nope.onnx")));
        Assert.Contains("nope.onnx: file not found", missing.Message);

        File.WriteAllBytes(Out("corrupt.onnx"), Enumerable.Range(0, 300).Select(i => (byte)(i * 37)).ToArray());
        var corrupt = Assert.Throws<OnnxModelException>(() => OnnxModel.Load(Out("corrupt.onnx")));
        Assert.Contains("corrupt.onnx: not an ONNX model", corrupt.Message);

        var file = ModelFileOf("sfmoe_test_patch8_32", Threshold);
        var foreign = Assert.Throws<OnnxModelException>(() => OnnxModel.Load(file));
        Assert.Contains(file, foreign.Message);

        // A valid ONNX model without SfMoe's metadata.
        var g = new Core.Onnx.Graph.Graph(17);
        var x = g.Input("x", Core.Onnx.Proto.DataType.float32, ListOf(Core.Onnx.Proto.Dim.NewKnown(2)));
        g.Output(g.Relu(x, FSharpOption<string>.None), "y", Core.Onnx.Proto.DataType.float32, ListOf(Core.Onnx.Proto.Dim.NewKnown(2)));
        using (var s = File.Create(Out("plain.onnx")))
            Core.Onnx.Protobuf.write(s, g.Model("test", "1", "", Microsoft.FSharp.Collections.FSharpList<Tuple<string, string>>.Empty));
        var plain = Assert.Throws<OnnxModelException>(() => OnnxModel.Load(Out("plain.onnx")));
        Assert.Contains("plain.onnx: not an SfMoe ONNX model", plain.Message);

        var onnx = OnnxExporter.Export(file, Out("m.onnx")).OutputPath;
        var cuda = Assert.Throws<OnnxModelException>(() => OnnxModel.Load(onnx, new OnnxModelOptions { Provider = OnnxProvider.Cuda }));
        Assert.Contains("CUDA", cuda.Message);
        Assert.Throws<OnnxModelException>(() => OnnxModel.Load(onnx, new OnnxModelOptions { BatchSize = 0 }));
    }

    static Microsoft.FSharp.Collections.FSharpList<T> ListOf<T>(params T[] xs) => Microsoft.FSharp.Collections.ListModule.OfArray(xs);

    /// <summary>A valid ONNX graph (images -> logits through Flatten and a Gemm) with the given metadata.</summary>
    string GraphWithMetadata(string name, params (string Key, string Value)[] meta)
    {
        var g = new Core.Onnx.Graph.Graph(17);
        var dims = ListOf(Core.Onnx.Proto.Dim.NewSymbolic("batch"), Core.Onnx.Proto.Dim.NewKnown(3), Core.Onnx.Proto.Dim.NewKnown(8), Core.Onnx.Proto.Dim.NewKnown(8));
        var x = g.Input("images", Core.Onnx.Proto.DataType.float32, dims);
        var flat = g.Node("Flatten", ListOf(x), FSharpOption<Microsoft.FSharp.Collections.FSharpList<Tuple<string, Core.Onnx.Proto.AttrValue>>>.None, FSharpOption<string>.None);
        var w = g.Init("w", Core.Onnx.Proto.TensorValueModule.float32s(new long[] { 2, 192 }, new float[2 * 192]));
        var y = g.GemmT(flat, w, FSharpOption<string>.None, FSharpOption<string>.None);
        g.Output(y, "logits", Core.Onnx.Proto.DataType.float32, ListOf(Core.Onnx.Proto.Dim.NewSymbolic("batch"), Core.Onnx.Proto.Dim.NewKnown(2)));
        var path = Out(name);
        using (var s = File.Create(path))
            Core.Onnx.Protobuf.write(s, g.Model("test", "1", "", ListOf(meta.Select(kv => Tuple.Create(kv.Key, kv.Value)).ToArray())));
        return path;
    }

    [Fact]
    public void PartialOrWrongMetadataIsAnErrorNamingTheFileAndTheKey()
    {
        var complete = new (string, string)[]
        {
            ("format", OnnxModel.Format), ("backbone", "vit"), ("num_classes", "2"), ("in_chans", "3"), ("img_size", "8"),
            ("class_names", "[\"a\",\"b\"]"), ("mean", "[0.5,0.5,0.5]"), ("std", "[0.25,0.25,0.25]"), ("resize", "pil-bilinear"),
        };
        // The complete set loads (so each case below fails for the reason it names).
        using (var ok = OnnxModel.Load(GraphWithMetadata("complete.onnx", complete)))
            Assert.Equal(new[] { "a", "b" }, ok.ClassNames);
        (string Key, string? Value, string Expected)[] cases =
        {
            ("mean", null, "its metadata lacks \"mean\""),
            ("class_names", null, "its metadata lacks \"class_names\""),
            ("mean", "[0.5,", "metadata \"mean\" is not valid JSON"),
            ("std", "[0.25,0.25]", "mean and std need 3 values each, got 3 and 2"),
            ("std", "[0.25,0,0.25]", "std has a value that is not > 0"),
            ("num_classes", "two", "metadata \"num_classes\" is not a positive integer: two"),
            ("resize", "nearest", "unknown resize \"nearest\""),
            ("format", "sfmoe-onnx-9", "unknown model format \"sfmoe-onnx-9\""),
            ("img_size", "16", "input \"images\" is Float [-1, 3, 8, 8], not float32 [B, 3, 16, 16]"),
            ("num_classes", "5", "no output \"logits\" of shape [B, 5]"),
        };
        for (int i = 0; i < cases.Length; i++)
        {
            var (key, value, expected) = cases[i];
            var meta = complete.Where(kv => kv.Item1 != key).ToList();
            if (value is not null) meta.Add((key, value));
            var name = $"partial{i}.onnx";
            var e = Assert.Throws<OnnxModelException>(() => OnnxModel.Load(GraphWithMetadata(name, meta.ToArray())));
            Assert.StartsWith(Out(name) + ": ", e.Message);
            Assert.Contains(expected, e.Message);
        }
    }

    [Fact]
    public void BadImagesAreErrorsNamingTheFileAndTheProblem()
    {
        var twoChannels = OnnxExporter.Export(ModelFileOf("mnist_cnn", classes: 2, inChans: 2, size: 28), Out("c2.onnx")).OutputPath;
        using var m = OnnxModel.Load(twoChannels);
        var img = Images()[0];
        var e = Assert.Throws<OnnxModelException>(() => m.Predict(img));
        Assert.Contains(img, e.Message);
        Assert.Contains("takes 2-channel images; the image has 3 channels", e.Message);
        File.WriteAllText(Out("not-an-image.jpg"), "hello");
        using var rgb = OnnxModel.Load(OnnxExporter.Export(ModelFileOf("gmoe_test_patch8_32"), Out("g.onnx")).OutputPath);
        var bad = Assert.Throws<ImageLoadException>(() => rgb.PredictBatch(new[] { img, Out("not-an-image.jpg") }));
        Assert.Contains("not-an-image.jpg", bad.Message);
        Assert.Throws<OnnxModelException>(() => m.Predict(img, top: 0));
    }

    [Fact]
    public void ExportErrorsNameTheSetting()
    {
        var file = ModelFileOf("gmoe_test_patch8_32");
        var opset = Assert.Throws<ConfigException>(() => OnnxExporter.Export(file, Out("x.onnx"), new OnnxExportOptions { Opset = 16 }));
        Assert.Contains("opset 16", opset.Message);
        Assert.ThrowsAny<CheckpointException>(() => OnnxExporter.Export(Out("missing.safetensors"), Out("x.onnx")));
        Assert.False(File.Exists(Out("x.onnx")));
        // Pretrained.Export takes "onnx" too.
        Pretrained.Export(file, "onnx", Out("p.onnx"));
        using var m = OnnxModel.Load(Out("p.onnx"));
        Assert.Equal("vit", m.Backbone);
    }

    static string RepoRoot()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (!File.Exists(Path.Combine(root.FullName, "SfMoe.sln"))) root = root.Parent!;
        return root.FullName;
    }

    static async Task<(int Code, string Out, string Err)> Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await p.WaitForExitAsync(cts.Token);
        return (p.ExitCode, await stdout, await stderr);
    }

    [Fact]
    public async Task TheDeploySampleRunsAnExportedModelWithSfMoeOnnxAlone()
    {
        var config = AppContext.BaseDirectory.Contains("/Release/") ? "Release" : "Debug";
        var dir = Path.Combine(RepoRoot(), "src-cs", "SfMoe.Onnx.Sample", "bin", config, "net10.0");
        var dll = Path.Combine(dir, "SfMoe.Onnx.Sample.dll");
        Assert.True(File.Exists(dll), $"sample not built: {dll}");
        Assert.False(File.Exists(Path.Combine(dir, "TorchSharp.dll")), "the sample carries TorchSharp");
        Assert.False(File.Exists(Path.Combine(dir, "SfMoe.Core.dll")), "the sample carries the F# core");
        var onnx = OnnxExporter.Export(ModelFileOf("sfmoe_test_patch8_32", Threshold), Out("m.onnx")).OutputPath;
        var images = Images();
        var (code, o, err) = await Run("dotnet", dll, onnx, images[0], images[4]);
        Assert.True(code == 0, err);
        Assert.Matches(@"bilevel_37x53.png: \w+ [0-9.]+ ?%", o);
        Assert.Matches(@"batch photo.jpg: \w+ [0-9.]+ ?%", o);
        Assert.EndsWith("onnx sample done", o.TrimEnd());
        var (badCode, _, badErr) = await Run("dotnet", dll, Data.ImageFixtures.PathOf("bilevel_37x53.png"), images[0]);
        Assert.Equal(1, badCode);
        Assert.Contains("bilevel_37x53.png: not an ONNX model", badErr);
    }

    [Fact]
    public async Task TheDeploySamplesFrameworkDependentLinuxPublishIsUnder100MB()
    {
        var project = Path.Combine(RepoRoot(), "src-cs", "SfMoe.Onnx.Sample", "SfMoe.Onnx.Sample.csproj");
        var publish = Out("publish");
        var (code, o, err) = await Run("dotnet", "publish", project, "-c", "Release", "-r", "linux-x64", "--self-contained", "false",
            "-o", publish, "-nologo", "-v", "q", "--artifacts-path", Out("artifacts"));
        Assert.True(code == 0, o + err);
        var bytes = Directory.EnumerateFiles(publish, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
        Assert.True(bytes < 100L * 1024 * 1024, $"published {bytes / 1e6:F1} MB");
        Assert.False(File.Exists(Path.Combine(publish, "TorchSharp.dll")));
        var onnx = OnnxExporter.Export(ModelFileOf("gmoe_test_patch8_32"), Out("g.onnx")).OutputPath;
        var (runCode, runOut, runErr) = await Run(Path.Combine(publish, "SfMoe.Onnx.Sample"), onnx, Images()[1]);
        Assert.True(runCode == 0, runErr);
        Assert.EndsWith("onnx sample done", runOut.TrimEnd());
    }
}
