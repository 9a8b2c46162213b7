using SfMoe.Checkpoints;
using SfMoe.Core;
using SfMoe.Data;
using SfMoe.Imaging;
using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe.Analysis;

/// <summary>
/// The patch grid of a model at its input size: token <c>n</c> after the prefix tokens (cls, dist) is patch
/// (<c>n / Cols</c>, <c>n % Cols</c>), covering input pixels [col·PatchWidth, (col+1)·PatchWidth) x [row·PatchHeight, ...).
/// </summary>
/// <param name="Rows">Patch rows.</param>
/// <param name="Cols">Patch columns.</param>
/// <param name="PatchHeight">Height of a patch in model-input pixels (input height / rows).</param>
/// <param name="PatchWidth">Width of a patch in model-input pixels.</param>
public readonly record struct PatchGrid(int Rows, int Cols, double PatchHeight, double PatchWidth)
{
    /// <summary>Number of patches.</summary>
    public int Count => Rows * Cols;

    /// <summary>Row and column of patch <paramref name="index"/> (row-major).</summary>
    public (int Row, int Col) Of(int index) => (index / Cols, index % Cols);

    /// <summary>Centre of patch <paramref name="index"/> in model-input pixels (x right, y down).</summary>
    public (double X, double Y) Center(int index) => ((index % Cols + 0.5) * PatchWidth, (index / Cols + 0.5) * PatchHeight);

    /// <summary>
    /// The <paramref name="count"/> patches whose centres are nearest to (<paramref name="x"/>, <paramref name="y"/>) in
    /// model-input pixels (Euclidean; ties go to the lower patch index), nearest first. Inside the image this is the 3x3
    /// neighbourhood for count 9; at an edge or corner it reaches further in.
    /// </summary>
    public int[] Nearest(double x, double y, int count)
    {
        if (count < 1) throw new ArgumentOutOfRangeException(nameof(count), "count must be >= 1");
        var d = new (double D, int I)[Count];
        for (int i = 0; i < Count; i++)
        {
            var (cx, cy) = Center(i);
            d[i] = ((cx - x) * (cx - x) + (cy - y) * (cy - y), i);
        }
        Array.Sort(d, (a, b) => a.D != b.D ? a.D.CompareTo(b.D) : a.I.CompareTo(b.I));
        return d.Take(Math.Min(count, Count)).Select(t => t.I).ToArray();
    }
}

/// <summary>
/// What one sparse block did with a batch, as managed arrays (row-major, B images x N tokens x k choices x E experts).
/// Built from a model's <see cref="RoutingRecord"/> or by hand (tests, other frameworks).
/// </summary>
public sealed class RoutingData
{
    /// <summary>Wraps arrays; shapes are checked.</summary>
    /// <param name="block">Block index (0-based).</param>
    /// <param name="batch">Images B.</param>
    /// <param name="tokens">Tokens per image N (prefix tokens included).</param>
    /// <param name="topK">Choices per token k.</param>
    /// <param name="numExperts">Experts E.</param>
    /// <param name="index">(B, N, k) chosen experts; column 0 is the router's top-1.</param>
    /// <param name="kept">(B, N, k) the choice was processed (not dropped by the second-expert policy or capacity).</param>
    /// <param name="probs">(B, N, E) router probabilities.</param>
    /// <param name="capacity">Capacity per group and expert, -1 when dropless.</param>
    public RoutingData(int block, int batch, int tokens, int topK, int numExperts, int[] index, bool[] kept, float[] probs, long capacity = -1)
    {
        if (index.Length != batch * tokens * topK) throw new ArgumentException($"index needs {batch * tokens * topK} values, got {index.Length}");
        if (kept.Length != index.Length) throw new ArgumentException($"kept needs {index.Length} values, got {kept.Length}");
        if (probs.Length != batch * tokens * numExperts) throw new ArgumentException($"probs needs {batch * tokens * numExperts} values, got {probs.Length}");
        if (index.Any(e => e < 0 || e >= numExperts)) throw new ArgumentException($"an expert index is outside 0..{numExperts - 1}");
        Block = block; Batch = batch; Tokens = tokens; TopK = topK; NumExperts = numExperts;
        Index = index; Kept = kept; Probs = probs; Capacity = capacity;
    }

    /// <summary>Copies a model's routing record to managed arrays.</summary>
    public static RoutingData FromRecord(RoutingRecord r)
    {
        var shape = r.Index.shape;
        int b = (int)shape[0], n = (int)shape[1], k = (int)shape[2], e = (int)r.Probs.shape[2];
        return From(r.Block, b, n, k, e, r.Index, r.Kept, r.Probs, r.Capacity);
    }

    internal static RoutingData From(int block, int b, int n, int k, int e, Tensor index, Tensor kept, Tensor probs, long capacity)
    {
        using var scope = NewDisposeScope();
        var idx = index.cpu().to_type(ScalarType.Int32).contiguous().data<int>().ToArray();
        var kp = kept.cpu().contiguous().data<bool>().ToArray();
        var pr = probs.cpu().to_type(ScalarType.Float32).contiguous().data<float>().ToArray();
        return new RoutingData(block, b, n, k, e, idx, kp, pr, capacity);
    }

    /// <summary>Block index (0-based).</summary>
    public int Block { get; }
    /// <summary>Images B.</summary>
    public int Batch { get; }
    /// <summary>Tokens per image N.</summary>
    public int Tokens { get; }
    /// <summary>Choices per token k.</summary>
    public int TopK { get; }
    /// <summary>Experts E.</summary>
    public int NumExperts { get; }
    /// <summary>(B, N, k) chosen experts.</summary>
    public int[] Index { get; }
    /// <summary>(B, N, k) processed choices.</summary>
    public bool[] Kept { get; }
    /// <summary>(B, N, E) router probabilities.</summary>
    public float[] Probs { get; }
    /// <summary>Capacity per group and expert; -1 when dropless.</summary>
    public long Capacity { get; }

    /// <summary>The router's top-1 expert of token <paramref name="n"/> of image <paramref name="b"/>.</summary>
    public int Top1(int b, int n) => Index[(b * Tokens + n) * TopK];

    /// <summary>Top-1 experts of image <paramref name="b"/>'s patch tokens (the tokens after <paramref name="prefix"/>).</summary>
    public int[] PatchTop1(int b, int prefix)
    {
        var r = new int[Tokens - prefix];
        for (int i = 0; i < r.Length; i++) r[i] = Top1(b, prefix + i);
        return r;
    }
}

/// <summary>One probed batch: logits, the CLS token's attention per block and the routing per sparse block.</summary>
public sealed class ProbeResult
{
    internal ProbeResult(int batch, float[][] logits, IReadOnlyList<float[]> clsAttention, IReadOnlyList<RoutingData> routing, int heads, int patches)
    { Batch = batch; Logits = logits; ClsAttention = clsAttention; Routing = routing; Heads = heads; Patches = patches; }

    /// <summary>Images in the batch.</summary>
    public int Batch { get; }
    /// <summary>Per image, the class logits.</summary>
    public float[][] Logits { get; }
    /// <summary>
    /// Per block (empty unless asked for): (B, heads, patches) attention of the CLS query over the patch keys (the
    /// prefix keys left out, so a head's row sums to at most 1), as DINO's <c>attn[:, :, 0, prefix:]</c>.
    /// </summary>
    public IReadOnlyList<float[]> ClsAttention { get; }
    /// <summary>Per sparse block (empty unless asked for), its routing.</summary>
    public IReadOnlyList<RoutingData> Routing { get; }
    /// <summary>Attention heads.</summary>
    public int Heads { get; }
    /// <summary>Patch tokens per image.</summary>
    public int Patches { get; }

    /// <summary>The CLS attention map of image <paramref name="b"/>, head <paramref name="h"/> in block <paramref name="block"/>.</summary>
    public float[] ClsMap(int block, int b, int h)
    {
        var a = ClsAttention[block];
        return a.AsSpan((b * Heads + h) * Patches, Patches).ToArray();
    }
}

/// <summary>
/// A ViT / SF-MoE model opened for analysis: runs images (eval mode, deterministic: random choices come from a
/// generator seeded with <see cref="Seed"/> for every batch) and returns routing and attention as managed arrays.
/// Owns native memory when loaded from a file: dispose it.
/// <code>
/// using var probe = ModelProbe.Load("runs/x/model.safetensors");
/// var r = probe.Probe(new[] { ImageCodec.Decode("a.png") }, attention: true, routing: true);
/// </code>
/// </summary>
public sealed class ModelProbe : IDisposable
{
    readonly Vit.SfMoeVit _vit;
    readonly bool _owns;
    readonly Device _device;

    ModelProbe(Vit.SfMoeVit vit, bool owns, string name, IReadOnlyList<string> classes, float[] mean, float[] std, string? dataset)
    {
        _vit = vit; _owns = owns; Name = name; ClassNames = classes; Mean = mean; Std = std; Dataset = dataset;
        _device = vit.Dd.Device;
        var c = vit.Config;
        int g = Config.VitConfigModule.grid(c);
        Grid = new PatchGrid(g, g, (double)c.ImgSize / g, (double)c.ImgSize / g);
        Kinds = Config.VitConfigModule.kinds(c).Select(k => k.IsSparse ? "S" : "F").ToArray();
    }

    static ModelProbe() { Native.ensure(); }

    /// <summary>Opens a model file (a ViT or SF-MoE; CNN baselines have no tokens to analyse), its random choices seeded
    /// with <paramref name="seed"/> (<see cref="Seed"/>).</summary>
    /// <exception cref="SfMoeException">Missing or foreign file, or a CNN model.</exception>
    public static ModelProbe Load(string path, string device = "cpu", long seed = 0)
    {
        var (net, header) = ModelFile.Load(path, device);
        if (net is not Networks.Network.VitNet v)
        {
            net.Module.Dispose();
            throw new ConfigException($"{path}: a {header.Backbone} model has no tokens, attention or routing to analyse (a ViT or SF-MoE model is needed)");
        }
        var name = Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(path))) is { Length: > 0 } d ? d : Path.GetFileNameWithoutExtension(path);
        return new ModelProbe(v.Item, true, name, header.ClassNames, header.Mean, header.Std, header.Dataset) { Seed = seed };
    }

    /// <summary>Wraps a model built in code (not owned: dispose the model yourself). Inputs are normalised with
    /// <paramref name="mean"/>/<paramref name="std"/> (ImageNet's by default).</summary>
    public static ModelProbe FromModel(SfMoeModel model, string name = "model", IReadOnlyList<string>? classNames = null, float[]? mean = null, float[]? std = null) =>
        new(model.Vit, false, name, classNames ?? Enumerable.Range(0, model.NumClasses).Select(i => $"class{i}").ToArray(),
            mean ?? Transforms.ImageNetMean.ToArray(), std ?? Transforms.ImageNetStd.ToArray(), null);

    /// <summary>A short name (the run folder of a model file), for titles and file names.</summary>
    public string Name { get; set; }
    /// <summary>Class names in label order.</summary>
    public IReadOnlyList<string> ClassNames { get; }
    /// <summary>The dataset the model was trained on, when its file says.</summary>
    public string? Dataset { get; }
    /// <summary>Input normalisation mean.</summary>
    public float[] Mean { get; }
    /// <summary>Input normalisation std.</summary>
    public float[] Std { get; }
    /// <summary>Seed of the generator behind the model's random choices (second-expert policy, gate noise); default 0.</summary>
    public long Seed { get; set; }
    /// <summary>The patch grid at the model's input size.</summary>
    public PatchGrid Grid { get; }
    /// <summary>Square input size.</summary>
    public int ImageSize => _vit.Config.ImgSize;
    /// <summary>Input channels.</summary>
    public int InChannels => _vit.Config.InChans;
    /// <summary>Tokens before the patches (1, or 2 with a distillation token).</summary>
    public int PrefixTokens => Config.VitConfigModule.prefixTokens(_vit.Config);
    /// <summary>Blocks.</summary>
    public int Depth => _vit.Config.Depth;
    /// <summary>Attention heads per block.</summary>
    public int Heads => _vit.Config.NumHeads;
    /// <summary>"S" or "F" per block.</summary>
    public IReadOnlyList<string> Kinds { get; }
    /// <summary>Indices of the sparse blocks.</summary>
    public IReadOnlyList<int> SparseBlocks => Kinds.Select((k, i) => (k, i)).Where(t => t.k == "S").Select(t => t.i).ToArray();
    /// <summary>Experts per sparse block.</summary>
    public int NumExperts => _vit.Config.Moe.NumExperts;
    /// <summary>Choices per token.</summary>
    public int TopK => _vit.Config.Moe.TopK;
    /// <summary>The canonical block pattern.</summary>
    public string Pattern => Core.Pattern.print(_vit.Config.Pattern);

    /// <summary>The eval preprocessing: resize to the model's input size (PIL bilinear), normalise.</summary>
    public IPreprocessor Preprocessor(DatasetSpec? spec = null) =>
        spec?.Preprocess == Data.Preprocess.Mnist || InChannels != 3
            ? new MnistPreprocessor(InChannels, ImageSize)
            : new ImageNetPreprocessor(3, ImageSize, Mean, Std);

    /// <summary>Runs decoded images through the model (eval mode, no gradients).</summary>
    public ProbeResult Probe(IReadOnlyList<ImageU8> images, bool attention, bool routing, DatasetSpec? spec = null)
    {
        if (images.Count == 0) throw new ConfigException("no images to probe");
        var pre = Preprocessor(spec);
        int per = pre.Channels * pre.Height * pre.Width;
        var x = new float[images.Count * per];
        for (int i = 0; i < images.Count; i++)
        {
            var img = images[i];
            if (pre.Channels == 1 && img.Channels != 1) img = Transforms.ToGrayscale(img, 1);
            if (pre.Channels == 3 && img.Channels == 1) img = Gray2Rgb(img);
            pre.ToInput(pre.Resize(img), x.AsSpan(i * per, per));
        }
        using var scope = NewDisposeScope();
        var t = torch.tensor(x, new long[] { images.Count, pre.Channels, pre.Height, pre.Width }).to(_device);
        return ProbeTensor(t, attention, routing);
    }

    /// <summary>Runs a preprocessed batch (B, C, H, W) through the model (eval mode, no gradients).</summary>
    public ProbeResult ProbeTensor(Tensor input, bool attention, bool routing)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var gen = new Generator((ulong)Seed); // a CPU generator: the core copies its draws to the model's device
        bool was = _vit.training;
        _vit.eval();
        try
        {
            using var o = _vit.Run(TrainStream.OnDevice(input.alias(), _device), attention, routing, gen);
            int b = (int)input.shape[0];
            var logits = o.Logits.cpu().to_type(ScalarType.Float32).contiguous().data<float>().ToArray();
            int k = logits.Length / b;
            var rows = Enumerable.Range(0, b).Select(i => logits.AsSpan(i * k, k).ToArray()).ToArray();
            int p = PrefixTokens;
            var maps = new List<float[]>();
            int patches = 0;
            foreach (var a in o.Attention)
            {
                // (B, H, N, N) -> CLS query row over the patch keys: (B, H, N - prefix)
                var n = a.shape[2];
                using var row = a.select(2, 0).narrow(2, p, n - p).cpu().to_type(ScalarType.Float32).contiguous();
                patches = (int)(n - p);
                maps.Add(row.data<float>().ToArray());
            }
            var recs = new List<RoutingData>();
            foreach (var tr in o.Routing)
            {
                var r = tr.Item2;
                recs.Add(RoutingData.From(tr.Item1, (int)r.Index.shape[0], (int)r.Index.shape[1], (int)r.Index.shape[2],
                    (int)r.Probs.shape[2], r.Index, r.Kept, r.Probs, r.Capacity));
            }
            if (patches == 0) patches = Grid.Count;
            return new ProbeResult(b, rows, maps, recs, Heads, patches);
        }
        catch (ArgumentException e) { throw new ConfigException(e.Message.Split(" (Parameter")[0], e); }
        finally { if (was) _vit.train(); }
    }

    static ImageU8 Gray2Rgb(ImageU8 g)
    {
        var px = new byte[g.Height * g.Width * 3];
        for (int i = 0; i < g.Height * g.Width; i++) px[3 * i] = px[3 * i + 1] = px[3 * i + 2] = g.Pixels[i * g.Channels];
        return new ImageU8(g.Height, g.Width, 3, px);
    }

    /// <inheritdoc />
    public void Dispose() { if (_owns) _vit.Dispose(); }
}
