using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using SfMoe.Core;
using TorchSharp;
using CoreExport = SfMoe.Core.Export;
using CoreImport = SfMoe.Core.ImportSource;
using CoreImportReport = SfMoe.Core.ImportReport;

namespace SfMoe.Checkpoints;

/// <summary>Options of <see cref="Pretrained.Import"/>. Unset values come from the checkpoint.</summary>
public sealed class ImportOptions
{
    /// <summary>Registry model to load into (<c>sfmoe models</c>), or <c>resnet50</c>. Null: the checkpoint's own
    /// architecture (DomainBed's algorithm, SfMoe's export metadata, or inferred from the tensors).</summary>
    public string? Model { get; set; }
    /// <summary>A model config JSON text instead of <see cref="Model"/>.</summary>
    public string? ModelConfigJson { get; set; }
    /// <summary>Classes of the head(s); a different count than the checkpoint's re-initialises them.</summary>
    public int? NumClasses { get; set; }
    /// <summary>Input size; a different one than the checkpoint's resamples pos_embed (bicubic).</summary>
    public int? ImageSize { get; set; }
    /// <summary>Experts of blocks that are sparse in the model but dense in the checkpoint: Copy (the dense FFN in
    /// every expert, GMoE) or Random (left at their init, the authors' SF-MoE). Null: Random for SF-MoE's linear
    /// router, Copy for GMoE's cosine router.</summary>
    public Runs.ExpertInit? Experts { get; set; }
    /// <summary>Normalisation recorded in the model file: "imagenet" or "inception" (mean = std = 0.5). Null: what the
    /// weights expect (0.5 for Google's augreg .npz, ImageNet statistics otherwise).</summary>
    public string? Normalization { get; set; }
    /// <summary>Class names for the header; null writes class0, class1, ...</summary>
    public IReadOnlyList<string>? ClassNames { get; set; }
    /// <summary>Seed of the init of everything the checkpoint does not provide (heads, routers, experts).</summary>
    public long Seed { get; set; }
    /// <summary>Device the network is built on.</summary>
    public string Device { get; set; } = "cpu";
}

/// <summary>A checkpoint key and what happened to it, with the reason.</summary>
public sealed record KeyNote(string Key, string Reason);

/// <summary>A checkpoint key and the model key it became.</summary>
public sealed record KeyMapping(string From, string To);

/// <summary>A resampled position embedding: key, checkpoint shape, model shape.</summary>
public sealed record KeyResample(string Key, long[] From, long[] To);

/// <summary>What an import did with every key (see <c>SfMoe.Core.ImportLoad</c>).</summary>
public sealed class ImportReport
{
    internal ImportReport(CoreImportReport.Report r, CoreImport.Normalization expected, string format, IEnumerable<string>? notes = null)
    {
        Raw = r;
        Format = format;
        Loaded = r.Loaded.ToList();
        Renamed = r.Renamed.Select(t => new KeyMapping(t.Item1, t.Item2)).ToList();
        Resampled = r.Resampled.Select(t => new KeyResample(t.Item1, t.Item2, t.Item3)).ToList();
        Reinitialised = r.Reinitialised.Select(t => new KeyNote(t.Item1, t.Item2)).ToList();
        Upcycled = r.Upcycled.Select(t => new KeyMapping(t.Item1, t.Item2)).ToList();
        Initialised = r.Initialised.Select(t => new KeyNote(t.Item1, t.Item2)).ToList();
        Ignored = r.Ignored.Select(t => new KeyNote(t.Item1, t.Item2)).ToList();
        Info = r.Info.Select(t => new KeyNote(t.Item1, t.Item2)).ToList();
        Notes = r.Notes.Concat(notes ?? Array.Empty<string>()).ToList();
        Mean = expected.Mean;
        Std = expected.Std;
        NormalizationName = expected.Name;
    }

    internal CoreImportReport.Report Raw { get; }
    /// <summary>The checkpoint format.</summary>
    public string Format { get; }
    /// <summary>Model keys copied unchanged.</summary>
    public IReadOnlyList<string> Loaded { get; }
    /// <summary>Checkpoint names that differ from the model's.</summary>
    public IReadOnlyList<KeyMapping> Renamed { get; }
    /// <summary>Position embeddings resampled to the model's grid.</summary>
    public IReadOnlyList<KeyResample> Resampled { get; }
    /// <summary>Heads left at their init (class count differs or absent).</summary>
    public IReadOnlyList<KeyNote> Reinitialised { get; }
    /// <summary>Dense FFN keys copied into every expert.</summary>
    public IReadOnlyList<KeyMapping> Upcycled { get; }
    /// <summary>Model keys the checkpoint cannot provide (routers, experts with "random"), left at their init.</summary>
    public IReadOnlyList<KeyNote> Initialised { get; }
    /// <summary>Checkpoint keys not used, with the reason.</summary>
    public IReadOnlyList<KeyNote> Ignored { get; }
    /// <summary>Other entries of the file (DomainBed's args, hparams, ...), summarised.</summary>
    public IReadOnlyList<KeyNote> Info { get; }
    /// <summary>Assumptions made (an inferred model).</summary>
    public IReadOnlyList<string> Notes { get; }
    /// <summary>Input mean the weights expect (per channel).</summary>
    public float[] Mean { get; }
    /// <summary>Input std the weights expect (per channel).</summary>
    public float[] Std { get; }
    /// <summary>"imagenet" or "inception" (mean = std = 0.5).</summary>
    public string NormalizationName { get; }

    /// <summary>The report as text lines; <paramref name="verbose"/> lists every loaded and renamed key.</summary>
    public IReadOnlyList<string> Lines(bool verbose = false) => Lines(verbose, "Lines(verbose: true) lists them");

    /// <summary>The report as text lines; without <paramref name="verbose"/>, the counts of loaded and renamed keys
    /// come with <paramref name="listHint"/>, which says how to list them (the command line names its flag).</summary>
    internal IReadOnlyList<string> Lines(bool verbose, string listHint)
    {
        var r = new CoreImportReport.Report(Raw.Loaded, Raw.Renamed, Raw.Resampled, Raw.Reinitialised, Raw.Upcycled, Raw.Initialised,
                                  Raw.Ignored, Raw.Info, ListModule.OfSeq(Notes));
        return CoreImportReport.describe(listHint, verbose, r).ToList();
    }
}

/// <summary>The result of <see cref="Pretrained.Import"/>: the model file written and what went into it.</summary>
public sealed record ImportResult(string OutputPath, ModelHeader Header, ImportReport Report, string Model);

/// <summary>
/// Pretrained weights from PyTorch checkpoints into SfMoe, and back out. Formats: deit, timm, augreg, sfmoe-dg, gmoe,
/// torchvision (see <c>SfMoe.Core.ImportSource</c>); export: timm (.safetensors) or pytorch (torch.save .pth). PyTorch pickles
/// are read without executing anything: any global other than the tensor-rebuild functions, storage types and
/// OrderedDict is refused with an error naming it.
/// </summary>
public static class Pretrained
{
    static Pretrained() { Native.ensure(); }

    /// <summary>The import formats.</summary>
    public static IReadOnlyList<string> Formats => CoreImport.FormatModule.all.Select(t => t.Item1).ToList();

    /// <summary>The export formats.</summary>
    public static IReadOnlyList<string> ExportFormats => CoreExport.FormatModule.all.Select(t => t.Item1).Append("onnx").ToList();

    internal static CoreImport.Format ParseFormat(string format) =>
        CoreImport.FormatModule.tryParse(format) is { } f ? f.Value
        : throw new CheckpointException($"unknown pretrained format {format}: expected {CoreImport.FormatModule.names}");

    /// <summary>An expert policy by name ("copy" or "random"; null or empty: the model's default).</summary>
    internal static Runs.ExpertInit? ParseExperts(string? experts) => experts?.Trim().ToLowerInvariant() switch
    {
        null or "" => null,
        "copy" => Runs.ExpertInit.Copy,
        "random" => Runs.ExpertInit.Random,
        _ => throw new ConfigException($"experts must be copy or random, got {experts}"),
    };

    static FSharpOption<Upcycle.ExpertInit>? CoreExperts(Runs.ExpertInit? experts) => experts switch
    {
        null => null,
        Runs.ExpertInit.Copy => FSharpOption<Upcycle.ExpertInit>.Some(Upcycle.ExpertInit.CopyDense),
        Runs.ExpertInit.Random => FSharpOption<Upcycle.ExpertInit>.Some(Upcycle.ExpertInit.KeepInit),
        _ => throw new ConfigException($"experts must be Copy or Random, got {experts}"),
    };

    /// <summary>Reads a checkpoint into memory under SfMoe's names (the caller disposes it).</summary>
    internal static CoreImport.Source Read(string path, string format)
    {
        var fmt = ParseFormat(format);
        return TensorFiles.Read(path, (name, stream) => CoreImport.read(fmt, name, stream));
    }

    /// <summary>
    /// Loads a pretrained checkpoint into a network built for training (<c>train --pretrained FILE --pretrained-format F</c>):
    /// the network keeps its own init wherever the checkpoint has nothing (a head with another class count, routers,
    /// experts with "random"). Fails, changing nothing, on any missing, unexpected or mis-shaped key.
    /// </summary>
    /// <param name="network">The network, built with the run's config and seed.</param>
    /// <param name="path">The checkpoint file.</param>
    /// <param name="format">deit, timm, augreg, sfmoe-dg, gmoe or torchvision.</param>
    /// <param name="experts">Copy, Random, or null for the network's default (Random for SF-MoE, Copy for GMoE).</param>
    /// <returns>What was loaded, resampled, re-initialised, upcycled and ignored, and the normalisation the weights expect.</returns>
    /// <exception cref="SfMoeException">Unreadable or unsafe file, unknown format, or keys that do not fit.</exception>
    internal static ImportReport LoadInto(Networks.Network network, string path, string format, Runs.ExpertInit? experts = null)
    {
        var mode = CoreExperts(experts);
        using var src = Read(path, format);
        var r = ImportLoad.loadInto(network, src, mode);
        return new ImportReport(r, src.Normalization, format);
    }

    /// <summary>
    /// <c>sfmoe import</c>: reads a checkpoint, builds the model (the given one or the checkpoint's own), loads it with
    /// a full key report and writes an SfMoe model file (weights + header with backbone, config, classes, mean/std).
    /// </summary>
    /// <exception cref="SfMoeException">Unreadable or unsafe file, unknown format or model, keys that do not fit.</exception>
    public static ImportResult Import(string inputPath, string format, string outputPath, ImportOptions? options = null)
    {
        options ??= new ImportOptions();
        var mode = CoreExperts(options.Experts);
        CoreImport.Normalization? norm = null;
        if (options.Normalization is not null)
            norm = CoreImport.NormalizationModule.tryParse(options.Normalization) is { } n ? n.Value
                : throw new CheckpointException($"normalization must be imagenet or inception, got {options.Normalization}");
        if (options.NumClasses is < 1) throw new CheckpointException($"num-classes must be >= 1, got {options.NumClasses}");
        if (options.ImageSize is < 1) throw new CheckpointException($"img-size must be >= 1, got {options.ImageSize}");
        if (options.Model is not null && options.ModelConfigJson is not null) throw new CheckpointException("give a model or a model config, not both");
        using var src = Read(inputPath, format);
        var notes = new List<string>();
        string modelName;
        ModelSpec.Source source;
        int? numClasses = options.NumClasses;
        if (src.IsResNet || options.Model == "resnet50")
        {
            if (!src.IsResNet) throw new CheckpointException($"{inputPath} is not a ResNet-50 checkpoint; resnet50 takes the format torchvision or a DomainBed ERM model.pkl");
            if (options.Model is not null && options.Model != "resnet50" || options.ModelConfigJson is not null)
                throw new CheckpointException($"{inputPath} is a ResNet-50 checkpoint: the model is resnet50");
            var cls = src.Tensors.FirstOrDefault(t => t.Item1 == "classifier.weight");
            numClasses ??= cls is null ? 1000 : (int)cls.Item2.shape[0];
            source = ModelSpec.Source.NewNamed("resnet50");
            modelName = "resnet50";
        }
        else if (options.ModelConfigJson is not null) { source = ModelSpec.Source.NewJson(options.ModelConfigJson); modelName = "model config"; }
        else if (options.Model is not null) { source = ModelSpec.Source.NewNamed(options.Model); modelName = options.Model; }
        else if (src.Config is { } stated)
        {
            source = ModelSpec.Source.NewGiven(Config.Architecture.NewVitArch(stated.Value));
            modelName = src.Algorithm is { } a ? $"{a.Value}'s model (from the checkpoint)" : "the checkpoint's config";
        }
        else
        {
            var inferred = ImportInfer.inferConfig(src);
            source = ModelSpec.Source.NewGiven(Config.Architecture.NewVitArch(inferred.Item1));
            notes.AddRange(inferred.Item2);
            modelName = "inferred from the checkpoint";
        }
        var arch = ModelSpec.resolve(ModelSpec.Create(source, null, numClasses, options.ImageSize, null));
        var net = Networks.build(arch, Tensors.DdModule.ofString(options.Device), options.Seed, 0.0);
        var (backbone, vitJson) = (Config.ArchitectureModule.backbone(arch), ModelSpec.vitJson(arch)?.Value);
        var (inChans, imgSize) = (Config.ArchitectureModule.inChans(arch), Config.ArchitectureModule.imgSize(arch));
        numClasses = Config.ArchitectureModule.numClasses(arch);
        using var _ = net.Module;
        var report = ImportLoad.loadInto(net, src, mode);
        var expected = norm ?? src.Normalization;
        var classNames = options.ClassNames ?? Enumerable.Range(0, numClasses.Value).Select(i => $"class{i}").ToList();
        if (classNames.Count != numClasses) throw new CheckpointException($"{classNames.Count} class names for {numClasses} classes");
        var algorithm = src.Algorithm is { } alg ? alg.Value : "import";
        var header = new ModelHeader(backbone, vitJson, numClasses.Value, inChans, imgSize, classNames,
                                     src.Dataset is { } ds ? ds.Value : null, 0, algorithm, "{}", expected.Mean, expected.Std);
        var extra = new Dictionary<string, string>
        {
            ["imported_from"] = Path.GetFileName(inputPath),
            ["imported_format"] = CoreImport.FormatModule.name(src.Format),
            ["normalization"] = expected.Name,
        };
        if (src.Normalization.Name != expected.Name)
            notes.Add($"normalization {expected.Name} recorded, although these weights expect {src.Normalization.Name}");
        ModelFile.Save(outputPath, net, header, extra);
        return new ImportResult(outputPath, header, new ImportReport(report, expected, format, notes), modelName);
    }

    /// <summary>
    /// <c>sfmoe export</c>: writes a model file's weights for PyTorch: "timm" (.safetensors, timm names, the model config
    /// in the header as sfmoe_model_config) or "pytorch" (a torch.save .pth of an OrderedDict). Sparse blocks keep
    /// SfMoe's (lucidrains') MoE layout: gate.w_gating [D, E], experts.w1 [E, D, H], experts.w2 [E, H, D].
    /// "onnx" writes an ONNX model with the default <see cref="OnnxExportOptions"/> (see <see cref="OnnxExporter"/>).
    /// </summary>
    /// <exception cref="SfMoeException">Unreadable model file, unknown format, or an unwritable output.</exception>
    public static void Export(string checkpointPath, string format, string outputPath)
    {
        if (string.Equals(format?.Trim(), "onnx", StringComparison.OrdinalIgnoreCase))
        {
            OnnxExporter.Export(checkpointPath, outputPath);
            return;
        }
        var fmt = CoreExport.FormatModule.tryParse(format) is { } f ? f.Value
            : throw new CheckpointException($"unknown export format {format}: expected timm, pytorch or onnx");
        var (net, header) = ModelFile.Load(checkpointPath);
        using var _ = net.Module;
        var meta = new Dictionary<string, string>
        {
            ["backbone"] = header.Backbone,
            ["num_classes"] = header.NumClasses.ToString(),
            ["class_names"] = System.Text.Json.JsonSerializer.Serialize(header.ClassNames),
            ["mean"] = System.Text.Json.JsonSerializer.Serialize(header.Mean),
            ["std"] = System.Text.Json.JsonSerializer.Serialize(header.Std),
            ["moe_layout"] = "lucidrains: mlp.gate.w_gating [D,E], mlp.experts.w1 [E,D,H], mlp.experts.w2 [E,H,D], y = gelu(x @ w1[e]) @ w2[e]",
        };
        if (header.ModelConfigJson is not null) meta["sfmoe_model_config"] = header.ModelConfigJson;
        var metadata = MapModule.OfSeq(meta.Select(kv => Tuple.Create(kv.Key, kv.Value)));
        TensorFiles.Write(outputPath, (name, stream) => CoreExport.write(fmt, name, net, metadata, stream));
    }
}
