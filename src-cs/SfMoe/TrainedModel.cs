using Microsoft.Extensions.Logging;
using SfMoe.Checkpoints;
using SfMoe.Core;
using SfMoe.Data;
using SfMoe.Imaging;
using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe;

/// <summary>One class and its probability.</summary>
public sealed record Prediction(string Class, int Index, double Probability);

/// <summary>Accuracy of a model on every environment's in and out split of a dataset.</summary>
/// <param name="Dataset">The dataset's name.</param>
/// <param name="Environments">Environment names in index order.</param>
/// <param name="Accuracies">"env{i}_in" / "env{i}_out" to accuracy.</param>
/// <param name="Counts">"env{i}_in" / "env{i}_out" to the number of readable images evaluated.</param>
public sealed record EvaluationResult(string Dataset, IReadOnlyList<string> Environments, IReadOnlyDictionary<string, double> Accuracies, IReadOnlyDictionary<string, int> Counts);

/// <summary>
/// A model file written by training or import, ready for inference: everything it needs (architecture, classes,
/// input size, normalisation) comes from the file. Owns native memory: dispose it.
/// <code>
/// using var model = TrainedModel.Load("runs/pacs/model.safetensors");
/// foreach (var p in model.Predict("photo.jpg")) Console.WriteLine($"{p.Class}: {p.Probability:P1}");
/// </code>
/// </summary>
public sealed class TrainedModel : IDisposable
{
    readonly Networks.Network _net;
    readonly Device _device;
    readonly Tensors.Precision _precision;

    TrainedModel(Networks.Network net, ModelHeader header, Device device, Precision precision)
    {
        _net = net; Header = header; _device = device; Precision = precision; _precision = Precisions.ToCore(precision);
        PrecisionNote = Tensors.PrecisionModule.configure(device, _precision);
    }

    static TrainedModel() { Native.ensure(); }

    /// <summary>Loads a model file (.safetensors with an SfMoe header).</summary>
    /// <exception cref="SfMoeException">Missing, corrupt or foreign file; the message names it.</exception>
    public static TrainedModel Load(string path, string device = "cpu") => Load(path, device, Precision.Fp32);

    /// <summary>Loads a model file to run on <paramref name="device"/> in <paramref name="precision"/> (bf16: bfloat16
    /// matmuls and attention, float32 logits; tf32 changes nothing on a CPU).</summary>
    /// <exception cref="SfMoeException">Missing, corrupt or foreign file; the message names it.</exception>
    public static TrainedModel Load(string path, string device, Precision precision)
    {
        _ = Precisions.ToCore(precision); // an undefined value fails before the file is read
        var (net, header) = ModelFile.Load(path, device);
        net.SetTraining(false);
        return new TrainedModel(net, header, Runs.Trainer.Device(device), precision);
    }

    /// <summary>The precision the model computes in.</summary>
    public Precision Precision { get; }

    /// <summary>What the precision means on the model's device (e.g. that tf32 changes nothing on a CPU).</summary>
    internal string PrecisionNote { get; }

    /// <summary>What the file says about the model.</summary>
    public ModelHeader Header { get; }

    /// <summary>Class names in label order.</summary>
    public IReadOnlyList<string> ClassNames => Header.ClassNames;

    /// <summary>Logits (B, K) for preprocessed images (B, C, H, W); eval mode, deterministic. The caller disposes them.</summary>
    public Tensor Logits(Tensor images)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var rng = new Generator(0); // a CPU generator: the core copies its draws to the model's device
        _net.SetTraining(false);
        try
        {
            var ctx = new Tensors.Ctx(false, Microsoft.FSharp.Core.FSharpOption<Tensors.Rng>.Some(Tensors.Rng.NewHost(rng)), _precision, false);
            var o = Networks.run(_net, ctx, false, TrainStream.OnDevice(images.alias(), _device));
            return scope.MoveToOuter(o.Logits);
        }
        catch (ArgumentException e) { throw new DatasetException(e.Message.Split(" (Parameter")[0], e); }
    }

    /// <summary>The preprocessing the model was trained with, for a dataset spec (or images, when null).</summary>
    public IPreprocessor Preprocessor(DatasetSpec? spec = null) =>
        spec?.Preprocess == Data.Preprocess.Mnist || Header.InChannels != 3
            ? new MnistPreprocessor(Header.InChannels, Header.ImageSize)
            : new ImageNetPreprocessor(3, Header.ImageSize, Header.Mean, Header.Std);

    /// <summary>The top classes for a decoded image.</summary>
    public IReadOnlyList<Prediction> Predict(ImageU8 image, int top = 5)
    {
        if (top < 1) throw new DatasetException($"top must be >= 1, got {top}");
        var img = image;
        if (Header.InChannels == 1 && img.Channels != 1) img = Transforms.ToGrayscale(img, 1);
        if (img.Channels != Header.InChannels)
            throw new DatasetException($"the model takes {Header.InChannels}-channel inputs; the image has {img.Channels} channels");
        var pre = Preprocessor();
        var x = new float[pre.Channels * pre.Height * pre.Width];
        pre.ToInput(pre.Resize(img), x);
        using var scope = NewDisposeScope();
        var t = torch.tensor(x, new long[] { 1, pre.Channels, pre.Height, pre.Width });
        var probs = Logits(t).softmax(1)[0].cpu().data<float>().ToArray();
        return probs.Select((p, i) => new Prediction(i < ClassNames.Count ? ClassNames[i] : $"class{i}", i, p))
                    .OrderByDescending(p => p.Probability).ThenBy(p => p.Index).Take(top).ToList();
    }

    /// <summary>The top classes for an image file.</summary>
    /// <exception cref="SfMoeException">The file cannot be read as an image.</exception>
    public IReadOnlyList<Prediction> Predict(string imagePath, int top = 5)
    {
        ImageU8 img;
        try { img = ImageCodec.Decode(imagePath); }
        catch (ImageLoadException e) { throw new DatasetException(e.Message, e); }
        return Predict(img, top);
    }

    /// <summary>
    /// Accuracy on every environment's in and out split (DomainBed's splits for <paramref name="trialSeed"/>),
    /// with the eval transform. Unreadable images are skipped (and counted out), each with a warning to
    /// <paramref name="logger"/>.
    /// </summary>
    /// <exception cref="OperationCanceledException"><paramref name="ct"/> was cancelled.</exception>
    public EvaluationResult Evaluate(IMultiDomainDataset dataset, int trialSeed = 0, double holdout = 0.2, int batchSize = 64, int workers = 1,
                                     ILogger? logger = null, CancellationToken ct = default)
    {
        var spec = dataset.Spec;
        if (spec.Classes.Count != Header.NumClasses)
            throw new DatasetException($"the model has {Header.NumClasses} classes, {spec.Name} has {spec.Classes.Count}");
        if (spec.Channels != Header.InChannels)
            throw new DatasetException($"the model takes {Header.InChannels}-channel inputs, {spec.Name} has {spec.Channels}");
        var pre = Preprocessor(spec);
        using var log = new RunLog(null, logger);
        var loader = new SafeLoader(log);
        var accs = new Dictionary<string, double>();
        var counts = new Dictionary<string, int>();
        for (int i = 0; i < dataset.Environments.Count; i++)
        {
            var env = dataset.Environments[i];
            var (outIdx, inIdx) = Splits.EnvSplit(i, env.Count, trialSeed, holdout);
            foreach (var (name, idx) in new[] { ($"env{i}_in", inIdx), ($"env{i}_out", outIdx) })
            {
                var split = new EvalSplit(name, env, idx, pre);
                split.Prepare(loader, keep: false, workers);
                accs[name] = split.Accuracy(x => { ct.ThrowIfCancellationRequested(); return Logits(x); }, loader, batchSize, workers, _device);
                counts[name] = split.ReadableCount;
            }
        }
        return new EvaluationResult(spec.Name, dataset.Environments.Select(e => e.Name).ToList(), accs, counts);
    }

    /// <inheritdoc />
    public void Dispose() => _net.Module.Dispose();
}
