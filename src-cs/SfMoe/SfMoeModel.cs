using TorchSharp;
using SfMoe.Core;
using static TorchSharp.torch;

namespace SfMoe;

/// <summary>One row of a model's layout.</summary>
/// <param name="Name">State-dict prefix, e.g. <c>blocks.5</c>.</param>
/// <param name="Kind">"S", "F", or a description of a non-block part.</param>
/// <param name="Parameters">Number of scalar parameters.</param>
public sealed record BlockInfo(string Name, string Kind, long Parameters);

/// <summary>A registry entry.</summary>
public sealed record ModelInfo(string Name, string Pattern, int EmbedDim, int Depth, int Heads, int PatchSize, int ImageSize, bool Distilled, long Parameters, string Description);

/// <summary>The outputs of one forward pass. Dispose it to free the tensors.</summary>
public sealed class ModelOutput : IDisposable
{
    internal ModelOutput(Tensor logits, Tensor features, IReadOnlyList<Tensor> attention)
    { Logits = logits; Features = features; Attention = attention; }

    /// <summary>(B, K) class logits.</summary>
    public Tensor Logits { get; }
    /// <summary>(B, N, D) token features after the final norm.</summary>
    public Tensor Features { get; }
    /// <summary>Per block, (B, heads, N, N) attention probabilities; empty unless requested.</summary>
    public IReadOnlyList<Tensor> Attention { get; }

    /// <inheritdoc />
    public void Dispose()
    {
        Logits.Dispose();
        Features.Dispose();
        foreach (var a in Attention) a.Dispose();
    }
}

/// <summary>
/// An SF-MoE / ViT model: create it from the registry, run it on image tensors. Owns native memory: dispose it.
/// <code>
/// using var model = SfMoeModel.Create("vit_test_patch8_32", new ModelOptions { Pattern = "[S,F]x2", Seed = 0 });
/// using var x = torch.randn(2, 3, 32, 32);
/// using var logits = model.Forward(x);   // (2, 10)
/// </code>
/// </summary>
public sealed class SfMoeModel : IDisposable
{
    readonly Vit.SfMoeVit _vit;

    SfMoeModel(Vit.SfMoeVit vit) { _vit = vit; }

    static SfMoeModel() { Native.ensure(); }

    /// <summary>Creates a registry model with optional overrides.</summary>
    /// <exception cref="SfMoeException">Unknown model, invalid pattern or option, or unavailable device.</exception>
    public static SfMoeModel Create(string model, ModelOptions? options = null)
    {
        options ??= new ModelOptions();
        var cfg = Registry.tryCreate(model);
        if (cfg.IsError) throw new SfMoeException(cfg.ErrorValue);
        var c = cfg.ResultValue;
        if (options.Pattern is not null)
        {
            var p = Core.Pattern.resolve(options.Pattern);
            if (p.IsError) throw new SfMoeException(p.ErrorValue.ToString());
            c = With(c, pattern: p.ResultValue);
        }
        if (options.NumClasses is int k) c = With(c, numClasses: k);
        if (options.ImageSize is int s) c = With(c, imgSize: s);
        return Create(c, options.Device, options.Seed);
    }

    internal static Config.VitConfig With(Config.VitConfig c, Core.Pattern.Pattern? pattern = null, int? numClasses = null, int? imgSize = null) =>
        new(imgSize ?? c.ImgSize, c.PatchSize, c.InChans, c.EmbedDim, c.Depth, c.NumHeads, c.MlpRatio, numClasses ?? c.NumClasses,
            c.Distilled, c.QkvBias, c.DropRate, c.AttnDropRate, c.DropPathRate, c.NormEps, pattern ?? c.Pattern, c.Moe);

    internal static SfMoeModel Create(Config.VitConfig config, string device, long? seed)
    {
        var v = Config.VitConfigModule.validate(config);
        if (v.IsError) throw new SfMoeException(v.ErrorValue);
        var dd = Tensors.DdModule.parse(device);
        if (dd.IsError) throw new SfMoeException(dd.ErrorValue);
        var seedOpt = seed is long s ? Microsoft.FSharp.Core.FSharpOption<long>.Some(s) : null;
        return new SfMoeModel(new Vit.SfMoeVit(config, dd.ResultValue, seedOpt));
    }

    /// <summary>All registry models.</summary>
    public static IReadOnlyList<ModelInfo> ListModels() =>
        Registry.all.Select(d =>
        {
            var c = Registry.toConfig(d).ResultValue;
            return new ModelInfo(d.Name, Core.Pattern.print(c.Pattern), c.EmbedDim, c.Depth, c.NumHeads, c.PatchSize, c.ImgSize,
                c.Distilled, Summary.totalParams(c), d.Description);
        }).ToList();

    /// <summary>The underlying TorchSharp module (state dict with timm names, parameters for optimizers).</summary>
    public nn.Module<Tensor, Tensor> Module => _vit;

    internal Vit.SfMoeVit Vit => _vit;

    /// <summary>Canonical block pattern.</summary>
    public string Pattern => Core.Pattern.print(_vit.Config.Pattern);

    /// <summary>Number of classes.</summary>
    public int NumClasses => _vit.Config.NumClasses;

    /// <summary>Configured input size (square).</summary>
    public int ImageSize => _vit.Config.ImgSize;

    /// <summary>Input channels.</summary>
    public int InChannels => _vit.Config.InChans;

    /// <summary>Total number of parameters.</summary>
    public long ParameterCount => Layers.countParams(_vit);

    /// <summary>Embedding, each block, final norm and head(s), with parameter counts.</summary>
    public IReadOnlyList<BlockInfo> Layout =>
        Summary.parts(_vit).Select(p => new BlockInfo(p.Name, p.Kind, p.Params)).ToList();

    /// <summary>Switches to training mode (dropout, drop-path and MoE training capacity active).</summary>
    public void Train() => _vit.train();

    /// <summary>Switches to evaluation mode.</summary>
    public void Eval() => _vit.eval();

    /// <summary>Class logits (B, K) for images (B, C, H, W). The caller disposes the result.</summary>
    /// <exception cref="SfMoeException">The input has the wrong rank, channel count or size.</exception>
    public Tensor Forward(Tensor images)
    {
        using var scope = NewDisposeScope();
        try { return scope.MoveToOuter(_vit.forward(images)); }
        catch (ArgumentException e) { throw new SfMoeException(e.Message.Split(" (Parameter")[0], e); }
    }

    /// <summary>Logits, features and optionally the attention maps of every block. Dispose the result.</summary>
    /// <exception cref="SfMoeException">The input has the wrong rank, channel count or size.</exception>
    public ModelOutput Run(Tensor images, bool returnAttention = false)
    {
        using var scope = NewDisposeScope();
        try
        {
            var o = _vit.Run(images, returnAttention);
            var logits = scope.MoveToOuter(o.Logits);
            var features = scope.MoveToOuter(o.Features);
            var maps = o.Attention.Select(a => scope.MoveToOuter(a)).ToList();
            return new ModelOutput(logits, features, maps);
        }
        catch (ArgumentException e) { throw new SfMoeException(e.Message.Split(" (Parameter")[0], e); }
    }

    /// <inheritdoc />
    public void Dispose() => _vit.Dispose();
}
