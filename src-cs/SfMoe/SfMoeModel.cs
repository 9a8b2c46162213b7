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

/// <summary>What one sparse block did with its tokens (docs/moe.md §8). Part of a <see cref="ModelOutput"/>, which
/// disposes it; dispose it yourself only if you take it out of its output.</summary>
public sealed class RoutingRecord : IDisposable
{
    internal RoutingRecord(int block, Moe.Record r)
    {
        Block = block; Index = r.Index; Gate = r.Gate; Kept = r.Kept; Probs = r.Probs; Load = r.Load;
        Capacity = r.Capacity; BalanceLoss = r.Balance;
    }

    /// <summary>Block index (0-based).</summary>
    public int Block { get; }
    /// <summary>(B, N, k) int64 chosen experts (column 1: second choice).</summary>
    public Tensor Index { get; }
    /// <summary>(B, N, k) renormalised gate values, before capacity dropping.</summary>
    public Tensor Gate { get; }
    /// <summary>(B, N, k) bool: the choice was processed (dispatched and within capacity).</summary>
    public Tensor Kept { get; }
    /// <summary>(B, N, E) router probabilities.</summary>
    public Tensor Probs { get; }
    /// <summary>(E) int64 processed (token, choice) pairs per expert.</summary>
    public Tensor Load { get; }
    /// <summary>Capacity per group and expert; -1 when dropless.</summary>
    public long Capacity { get; }
    /// <summary>The balance loss before its weight.</summary>
    public double BalanceLoss { get; }

    /// <summary>Frees the record's tensors.</summary>
    public void Dispose()
    {
        Index.Dispose(); Gate.Dispose(); Kept.Dispose(); Probs.Dispose(); Load.Dispose();
    }
}

/// <summary>The outputs of one forward pass. Dispose it to free the tensors.</summary>
public sealed class ModelOutput : IDisposable
{
    internal ModelOutput(Tensor logits, Tensor features, Tensor aux, IReadOnlyList<Tensor> attention, IReadOnlyList<RoutingRecord> routing)
    { Logits = logits; Features = features; AuxLoss = aux; Attention = attention; Routing = routing; }

    /// <summary>(B, K) class logits.</summary>
    public Tensor Logits { get; }
    /// <summary>(B, N, D) token features after the final norm.</summary>
    public Tensor Features { get; }
    /// <summary>Scalar: the weighted balance losses summed over sparse blocks (0 without them).</summary>
    public Tensor AuxLoss { get; }
    /// <summary>Per block, (B, heads, N, N) attention probabilities; empty unless requested.</summary>
    public IReadOnlyList<Tensor> Attention { get; }
    /// <summary>Per sparse block, its routing; empty unless requested.</summary>
    public IReadOnlyList<RoutingRecord> Routing { get; }

    /// <inheritdoc />
    public void Dispose()
    {
        Logits.Dispose();
        Features.Dispose();
        AuxLoss.Dispose();
        foreach (var a in Attention) a.Dispose();
        foreach (var r in Routing) r.Dispose();
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
    public static SfMoeModel Create(string model, ModelOptions? options = null) =>
        Create(ModelSpec.Source.NewNamed(model), options ?? new ModelOptions());

    /// <summary>Creates a model from a JSON config (snake_case keys; a "model" key starts from a registry model).</summary>
    /// <exception cref="ConfigException">Invalid JSON or config; the message names the key.</exception>
    public static SfMoeModel FromConfigJson(string json, string device = "cpu", long? seed = null) =>
        Create(ModelSpec.Source.NewJson(json), new ModelOptions { Device = device, Seed = seed });

    static SfMoeModel Create(ModelSpec.Source source, ModelOptions options)
    {
        var spec = ModelSpec.Create(source, options.Pattern, options.NumClasses, options.ImageSize, null);
        var arch = ModelSpec.resolve(spec);
        if (arch is not Config.Architecture.VitArch vit)
            throw new ConfigException($"{Config.ArchitectureModule.backbone(arch)} is a CNN baseline; SfMoeModel holds ViT models (TrainedModel loads any trained model)");
        return Create(vit.Item, options.Device, options.Seed);
    }

    internal static SfMoeModel Create(Config.VitConfig config, string device, long? seed)
    {
        var seedOpt = seed is long s ? Microsoft.FSharp.Core.FSharpOption<long>.Some(s) : null;
        return new SfMoeModel(new Vit.SfMoeVit(config, Tensors.DdModule.ofString(device), seedOpt));
    }

    /// <summary>The model's config as JSON (round-trips through <see cref="FromConfigJson"/>).</summary>
    public string ConfigJsonText => ConfigJson.toJson(true, _vit.Config);

    /// <summary>All registry models: the ViT variants, then the CNN baselines (their ViT-only fields are empty).</summary>
    public static IReadOnlyList<ModelInfo> ListModels() =>
        Registry.entries.Select(e =>
        {
            var arch = ModelSpec.resolve(ModelSpec.named(e.Name));
            return arch switch
            {
                Config.Architecture.VitArch { Item: var c } => new ModelInfo(e.Name, Core.Pattern.print(c.Pattern), c.EmbedDim, c.Depth, c.NumHeads,
                    c.PatchSize, c.ImgSize, c.Distilled, Summary.totalParams(c), e.Description),
                Config.Architecture.CnnArch { Item: var c } => new ModelInfo(e.Name, "", 0, 0, 0, 0, c.ImgSize, false, Summary.cnnParams(c), e.Description),
                _ => throw new InvalidOperationException(),
            };
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
        catch (ArgumentException e) { throw new ConfigException(e.Message.Split(" (Parameter")[0], e); }
    }

    /// <summary>
    /// Logits, features, the aux loss, and optionally the attention maps of every block and the routing of every
    /// sparse block. Random choices in sparse blocks (second expert, gate noise) and, in training mode, dropout use
    /// <paramref name="generator"/> when given (deterministic), else torch's global generator. Dispose the result.
    /// </summary>
    /// <exception cref="SfMoeException">The input has the wrong rank, channel count or size.</exception>
    public ModelOutput Run(Tensor images, bool returnAttention = false, bool returnRouting = false, Generator? generator = null)
    {
        using var scope = NewDisposeScope();
        try
        {
            var o = _vit.Run(images, returnAttention, returnRouting, generator!);
            var logits = scope.MoveToOuter(o.Logits);
            var features = scope.MoveToOuter(o.Features);
            var aux = scope.MoveToOuter(o.Aux);
            var maps = o.Attention.Select(a => scope.MoveToOuter(a)).ToList();
            var routing = o.Routing.Select(t =>
            {
                var r = t.Item2;
                foreach (var x in new[] { r.Index, r.Gate, r.Kept, r.Probs, r.Load }) scope.MoveToOuter(x);
                return new RoutingRecord(t.Item1, r);
            }).ToList();
            return new ModelOutput(logits, features, aux, maps, routing);
        }
        catch (ArgumentException e) { throw new ConfigException(e.Message.Split(" (Parameter")[0], e); }
    }

    /// <inheritdoc />
    public void Dispose() => _vit.Dispose();
}
