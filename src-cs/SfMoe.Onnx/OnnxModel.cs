using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using SfMoe.Imaging;

namespace SfMoe.Onnx;

/// <summary>One class and its probability.</summary>
public sealed record OnnxPrediction(string Class, int Index, double Probability);

/// <summary>
/// An SfMoe model exported to ONNX, run by ONNX Runtime: images are decoded, resized and normalised exactly as
/// <c>sfmoe predict</c> does (SfMoe.Imaging: Pillow's bilinear resize, greyscale for one-channel models, then
/// (x / 255 - mean) / std), from the settings in the model's metadata. Owns a native session: dispose it.
/// Thread-safe: predictions may run concurrently.
/// <code>
/// using var m = OnnxModel.Load("model.onnx");
/// foreach (var p in m.Predict("photo.jpg", top: 5)) Console.WriteLine($"{p.Class}: {p.Probability:P1}");
/// </code>
/// </summary>
public sealed class OnnxModel : IDisposable
{
    /// <summary>The value of the "format" metadata key of SfMoe's ONNX files.</summary>
    public const string Format = "sfmoe-onnx-1";

    readonly InferenceSession _session;
    readonly string _input, _output;
    readonly int _batchLimit;

    OnnxModel(string path, InferenceSession session, IReadOnlyDictionary<string, string> meta, int batchLimit)
    {
        Path = path; _session = session; Metadata = meta; _batchLimit = batchLimit;
        string Get(string k) => meta.TryGetValue(k, out var v) ? v : throw Bad($"its metadata lacks \"{k}\"");
        int GetInt(string k) => int.TryParse(Get(k), out var i) && i >= 1 ? i : throw Bad($"metadata \"{k}\" is not a positive integer: {Get(k)}");
        T GetJson<T>(string k) where T : class
        {
            try { return JsonSerializer.Deserialize<T>(Get(k)) ?? throw Bad($"metadata \"{k}\" is empty"); }
            catch (JsonException e) { throw Bad($"metadata \"{k}\" is not valid JSON ({e.Message})"); }
        }
        OnnxModelException Bad(string problem) => new($"{path}: {problem}");

        Backbone = Get("backbone");
        NumClasses = GetInt("num_classes");
        Channels = GetInt("in_chans");
        ImageSize = GetInt("img_size");
        ClassNames = GetJson<string[]>("class_names");
        Mean = GetJson<float[]>("mean");
        Std = GetJson<float[]>("std");
        if (Mean.Length != Channels || Std.Length != Channels)
            throw Bad($"metadata mean and std need {Channels} values each, got {Mean.Length} and {Std.Length}");
        if (Std.Any(s => !(s > 0))) throw Bad("metadata std has a value that is not > 0");
        if (Get("resize") != "pil-bilinear") throw Bad($"unknown resize \"{Get("resize")}\" in its metadata (expected pil-bilinear)");
        Stochastic = meta.TryGetValue("stochastic", out var st) && st == "true";
        _input = meta.TryGetValue("input", out var i) ? i : "images";
        _output = meta.TryGetValue("output", out var o) ? o : "logits";

        if (!session.InputMetadata.TryGetValue(_input, out var im))
            throw Bad($"the graph has no input \"{_input}\" (inputs: {string.Join(", ", session.InputMetadata.Keys)})");
        var dims = im.Dimensions;
        if (im.ElementDataType != Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Float || dims.Length != 4
            || dims[1] != Channels || dims[2] != ImageSize || dims[3] != ImageSize)
            throw Bad($"input \"{_input}\" is {im.ElementDataType} [{string.Join(", ", dims)}], not float32 [B, {Channels}, {ImageSize}, {ImageSize}] as its metadata says");
        if (!session.OutputMetadata.TryGetValue(_output, out var om) || om.Dimensions.Length != 2 || om.Dimensions[1] != NumClasses)
            throw Bad($"the graph has no output \"{_output}\" of shape [B, {NumClasses}]");
        FixedBatchSize = dims[0] > 0 ? (long?)dims[0] : null;
    }

    /// <summary>Loads an .onnx file written by SfMoe's exporter.</summary>
    /// <exception cref="OnnxModelException">A missing, corrupt or foreign file, a model without SfMoe's metadata, or a
    /// provider ONNX Runtime lacks; the message names the file.</exception>
    public static OnnxModel Load(string path, OnnxModelOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        var o = options ?? new OnnxModelOptions();
        if (o.BatchSize < 1) throw new OnnxModelException($"OnnxModelOptions.BatchSize must be >= 1, got {o.BatchSize}");
        if (o.Threads is < 1) throw new OnnxModelException($"OnnxModelOptions.Threads must be >= 1, got {o.Threads}");
        if (!File.Exists(path)) throw new OnnxModelException($"{path}: file not found");
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (IOException e) { throw new OnnxModelException($"{path}: cannot be read ({e.Message})", e); }
        catch (UnauthorizedAccessException e) { throw new OnnxModelException($"{path}: cannot be read ({e.Message})", e); }
        // Every graph optimisation (Gemm/Gelu/MatMul fusions, constant folding, NCHWc convolutions), and one thread per core.
        using var so = new SessionOptions
        {
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
            IntraOpNumThreads = o.Threads ?? Environment.ProcessorCount,
        };
        if (o.Provider == OnnxProvider.Cuda)
        {
            try { so.AppendExecutionProvider_CUDA(o.CudaDevice); }
            catch (Exception e) when (e is OnnxRuntimeException or EntryPointNotFoundException or DllNotFoundException)
            {
                throw new OnnxModelException(
                    $"{path}: the CUDA provider is not available in this ONNX Runtime ({e.Message.Trim()}); reference Microsoft.ML.OnnxRuntime.Gpu instead of Microsoft.ML.OnnxRuntime, or use OnnxProvider.Cpu", e);
            }
        }
        InferenceSession session;
        try { session = new InferenceSession(bytes, so); }
        catch (OnnxRuntimeException e)
        {
            throw new OnnxModelException($"{path}: not an ONNX model that ONNX Runtime can load ({e.Message.Trim()})", e);
        }
        try
        {
            var meta = session.ModelMetadata.CustomMetadataMap;
            if (!meta.TryGetValue("format", out var f))
                throw new OnnxModelException($"{path}: not an SfMoe ONNX model (its metadata has no \"format\"; export one with SfMoe's OnnxExporter)");
            if (f != Format) throw new OnnxModelException($"{path}: unknown model format \"{f}\" (expected {Format})");
            return new OnnxModel(path, session, new Dictionary<string, string>(meta), o.BatchSize);
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    /// <summary>The file it was loaded from.</summary>
    public string Path { get; }
    /// <summary>"vit", "resnet50" or "mnist_cnn".</summary>
    public string Backbone { get; }
    /// <summary>Classes (logits per image).</summary>
    public int NumClasses { get; }
    /// <summary>Class names in label order (may be fewer than <see cref="NumClasses"/>: the rest are "class{i}").</summary>
    public IReadOnlyList<string> ClassNames { get; }
    /// <summary>Input channels.</summary>
    public int Channels { get; }
    /// <summary>Input height and width.</summary>
    public int ImageSize { get; }
    /// <summary>Per-channel mean of the normalisation (after scaling pixels to [0, 1]).</summary>
    public float[] Mean { get; }
    /// <summary>Per-channel standard deviation of the normalisation.</summary>
    public float[] Std { get; }
    /// <summary>The batch size the graph was exported with; null when dynamic.</summary>
    public long? FixedBatchSize { get; }
    /// <summary>Whether the graph draws random numbers (SF-MoE's random second-expert policy): outputs vary between runs.</summary>
    public bool Stochastic { get; }
    /// <summary>Everything in the model's metadata (model config, dataset, ...).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Model input for a decoded image: C*H*W floats, as <c>sfmoe predict</c> makes it.</summary>
    /// <exception cref="OnnxModelException">The image has a channel count the model cannot take.</exception>
    public float[] Preprocess(ImageU8 image, string? source = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        var img = image;
        if (Channels == 1 && img.Channels != 1) img = ImageOps.ToGrayscale(img, 1);
        if (img.Channels != Channels)
            throw new OnnxModelException($"{source ?? "image"}: the model {System.IO.Path.GetFileName(Path)} takes {Channels}-channel images; the image has {img.Channels} channels");
        if (img.Height != ImageSize || img.Width != ImageSize) img = ImageOps.Resize(img, ImageSize, ImageSize);
        return ImageOps.ToCHW(img, Mean, Std);
    }

    /// <summary>Logits (B, K) row-major for preprocessed inputs (B, C, H, W) row-major.</summary>
    /// <exception cref="OnnxModelException">Inputs of the wrong size, or a batch a fixed-batch model cannot take.</exception>
    public float[] Logits(float[] inputs, int batch)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        long per = (long)Channels * ImageSize * ImageSize;
        if (batch < 1 || inputs.LongLength != per * batch)
            throw new OnnxModelException($"{Path}: expected {batch} x {Channels} x {ImageSize} x {ImageSize} input floats, got {inputs.LongLength}");
        if (FixedBatchSize is long fixedB && fixedB != batch)
            throw new OnnxModelException($"{Path}: the model was exported for batches of {fixedB}, got {batch}");
        using var x = OrtValue.CreateTensorValueFromMemory(inputs, new long[] { batch, Channels, ImageSize, ImageSize });
        using var ro = new RunOptions();
        using var outs = _session.Run(ro, new[] { _input }, new[] { x }, new[] { _output });
        return outs[0].GetTensorDataAsSpan<float>().ToArray();
    }

    /// <summary>The top classes for a decoded image.</summary>
    public IReadOnlyList<OnnxPrediction> Predict(ImageU8 image, int top = 5) => PredictBatch(new[] { image }, top)[0];

    /// <summary>The top classes for an image file.</summary>
    /// <exception cref="ImageLoadException">The file cannot be decoded.</exception>
    /// <exception cref="OnnxModelException">The image has a channel count the model cannot take.</exception>
    public IReadOnlyList<OnnxPrediction> Predict(string imagePath, int top = 5) => PredictBatch(new[] { imagePath }, top)[0];

    /// <summary>The top classes for each image file, in batches (decoding in parallel).</summary>
    public IReadOnlyList<IReadOnlyList<OnnxPrediction>> PredictBatch(IReadOnlyList<string> imagePaths, int top = 5)
    {
        ArgumentNullException.ThrowIfNull(imagePaths);
        var inputs = new float[imagePaths.Count][];
        try { Parallel.For(0, imagePaths.Count, i => inputs[i] = Preprocess(ImageCodec.Decode(imagePaths[i]), imagePaths[i])); }
        catch (AggregateException e) when (e.InnerExceptions.Count > 0)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
            throw;
        }
        return Classify(inputs, top);
    }

    /// <summary>The top classes for each decoded image, in batches.</summary>
    public IReadOnlyList<IReadOnlyList<OnnxPrediction>> PredictBatch(IReadOnlyList<ImageU8> images, int top = 5)
    {
        ArgumentNullException.ThrowIfNull(images);
        return Classify(images.Select((im, i) => Preprocess(im, $"image {i}")).ToArray(), top);
    }

    IReadOnlyList<IReadOnlyList<OnnxPrediction>> Classify(float[][] inputs, int top)
    {
        if (top < 1) throw new OnnxModelException($"top must be >= 1, got {top}");
        var results = new List<IReadOnlyList<OnnxPrediction>>(inputs.Length);
        // A fixed-batch model gets full batches: a partial one is padded with zero images (whose outputs are
        // dropped; with batch-scoped capacity, GMoE's routing sees them as the TorchSharp model would).
        int chunk = FixedBatchSize is long fb ? (int)fb : _batchLimit;
        int per = Channels * ImageSize * ImageSize;
        for (int start = 0; start < inputs.Length; start += chunk)
        {
            int n = Math.Min(chunk, inputs.Length - start);
            int b = FixedBatchSize is long f ? (int)f : n;
            var batch = new float[(long)b * per];
            for (int i = 0; i < n; i++) inputs[start + i].CopyTo(batch, (long)i * per);
            var logits = Logits(batch, b);
            for (int i = 0; i < n; i++) results.Add(TopClasses(logits.AsSpan(i * NumClasses, NumClasses), top));
        }
        return results;
    }

    /// <summary>Softmax in float32 (as the TorchSharp model's predict), then the top classes, ties by index.</summary>
    IReadOnlyList<OnnxPrediction> TopClasses(ReadOnlySpan<float> logits, int top)
    {
        float max = float.NegativeInfinity;
        foreach (var v in logits) max = Math.Max(max, v);
        var e = new float[logits.Length];
        float sum = 0;
        for (int i = 0; i < e.Length; i++) { e[i] = MathF.Exp(logits[i] - max); sum += e[i]; }
        return e.Select((p, i) => new OnnxPrediction(i < ClassNames.Count ? ClassNames[i] : $"class{i}", i, p / sum))
                .OrderByDescending(p => p.Probability).ThenBy(p => p.Index).Take(top).ToList();
    }

    /// <inheritdoc />
    public void Dispose() => _session.Dispose();
}
