using System.Collections.Concurrent;
using SfMoe.Imaging;
using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe.Data;

/// <summary>Turns decoded images into model inputs of a fixed size (CHW floats).</summary>
public interface IPreprocessor
{
    /// <summary>Input channels.</summary>
    int Channels { get; }
    /// <summary>Input height.</summary>
    int Height { get; }
    /// <summary>Input width.</summary>
    int Width { get; }
    /// <summary>Normalisation mean per channel.</summary>
    float[] Mean { get; }
    /// <summary>Normalisation std per channel.</summary>
    float[] Std { get; }
    /// <summary>The training transform (augmentation + normalisation) into <paramref name="dest"/> (C*H*W floats).</summary>
    void Train(ImageU8 image, Random rng, Span<float> dest);
    /// <summary>The deterministic part of the eval transform: the image at input size, still 8-bit (cacheable).</summary>
    ImageU8 Resize(ImageU8 image);
    /// <summary>The rest of the eval transform: an image from <see cref="Resize"/> to normalised floats.</summary>
    void ToInput(ImageU8 resized, Span<float> dest);
}

/// <summary>Deterministic seeds derived from integers (SplitMix64 mixing): per step, environment and sample.</summary>
internal static class SeedMix
{
    /// <summary>Mixes the values into one 32-bit seed.</summary>
    public static int Of(params long[] values)
    {
        ulong h = 0x9E3779B97F4A7C15UL;
        foreach (var v in values)
        {
            h ^= (ulong)v + 0x9E3779B97F4A7C15UL + (h << 6) + (h >> 2);
            h += 0x9E3779B97F4A7C15UL;
            ulong z = h;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            h = z ^ (z >> 31);
        }
        return (int)(h & 0x7FFFFFFF);
    }
}

/// <summary>
/// Loads images, skipping unreadable ones with one warning each (DomainBed would crash on them), and keeps decoded
/// images in memory up to a byte budget, so that training decodes each image once rather than at every epoch.
/// </summary>
internal sealed class SafeLoader
{
    readonly RunLog _log;
    readonly ConcurrentDictionary<(IDomainEnvironment, int), bool> _bad = new();
    readonly ConcurrentDictionary<(IDomainEnvironment, int), ImageU8> _cache = new();
    readonly long _budget;
    long _cached;

    /// <summary>Creates a loader that logs to <paramref name="log"/> and caches up to <paramref name="cacheBytes"/>.</summary>
    public SafeLoader(RunLog log, long cacheBytes = 0) { _log = log; _budget = cacheBytes; }

    /// <summary>Number of distinct unreadable samples met so far.</summary>
    public int BadCount => _bad.Count;

    /// <summary>Bytes of decoded images kept.</summary>
    public long CachedBytes => Interlocked.Read(ref _cached);

    /// <summary>Sample i, or null when it cannot be read (warned once).</summary>
    public ImageU8? TryLoad(IDomainEnvironment env, int index)
    {
        var key = (env, index);
        if (_cache.TryGetValue(key, out var hit)) return hit;
        if (_bad.ContainsKey(key)) return null;
        try
        {
            var img = env.Load(index);
            long size = img.Pixels.Length;
            if (Interlocked.Read(ref _cached) + size <= _budget && _cache.TryAdd(key, img)) Interlocked.Add(ref _cached, size);
            return img;
        }
        catch (ImageLoadException e)
        {
            if (_bad.TryAdd(key, true)) _log.Warn($"skipping unreadable image {e.Message}");
            return null;
        }
    }
}

/// <summary>One training step's inputs: one (x, y) minibatch per training environment, in environment order.</summary>
internal sealed class StepBatch : IDisposable
{
    internal StepBatch(int step, Tensor[] xs, Tensor[] ys) { Step = step; Xs = xs; Ys = ys; }
    /// <summary>The step these batches are for.</summary>
    public int Step { get; }
    /// <summary>(B, C, H, W) per environment.</summary>
    public Tensor[] Xs { get; }
    /// <summary>(B) int64 labels per environment.</summary>
    public Tensor[] Ys { get; }
    /// <inheritdoc />
    public void Dispose() { foreach (var t in Xs) t.Dispose(); foreach (var t in Ys) t.Dispose(); }
}

/// <summary>
/// DomainBed's infinite training loaders: each step takes a batch of B samples from each training environment's
/// in-split, drawn uniformly with replacement. Every draw and every augmentation is a pure function of
/// (seed, step, environment, position), so a run is a function of its seeds, workers may run in any order, and a
/// resumed run continues exactly (its loader position is the step). Decoding and augmentation run on worker
/// threads ahead of training (a bounded prefetch queue).
/// </summary>
internal sealed class TrainStream : IDisposable
{
    readonly IReadOnlyList<(IDomainEnvironment Env, int[] Indices)> _envs;
    readonly int _batch;
    readonly IPreprocessor _pre;
    readonly long _seed;
    readonly SafeLoader _loader;
    readonly int _workers;
    readonly Device _device;
    readonly BlockingCollection<StepBatch> _queue;
    readonly CancellationTokenSource _cts = new();
    readonly Task _producer;
    int _next;

    /// <summary>Starts producing batches for steps <paramref name="startStep"/>, startStep + 1, ...</summary>
    public TrainStream(IReadOnlyList<(IDomainEnvironment Env, int[] Indices)> envs, int batchSize, IPreprocessor pre, long seed,
                       int startStep, int workers, SafeLoader loader, Device device, int prefetch = 2)
    {
        if (batchSize < 1) throw new DatasetException($"batch size must be >= 1, got {batchSize}");
        foreach (var (env, idx) in envs)
            if (idx.Length == 0) throw new DatasetException($"environment {env.Name} has no training samples");
        _envs = envs; _batch = batchSize; _pre = pre; _seed = seed; _loader = loader;
        _workers = Math.Max(1, workers); _device = device; _next = startStep;
        _queue = new BlockingCollection<StepBatch>(Math.Max(1, prefetch));
        _producer = Task.Run(() => Produce(startStep, _cts.Token));
    }

    void Produce(int step, CancellationToken ct)
    {
        try
        {
            for (; !ct.IsCancellationRequested; step++)
                _queue.Add(Build(step), ct);
        }
        catch (OperationCanceledException) { }
        catch (Exception e) { _failure = e; }
        finally { _queue.CompleteAdding(); }
    }

    volatile Exception? _failure;

    // Reused between steps (torch.tensor copies them): a fresh large array per step would land on the large-object
    // heap and trigger full collections that pause training.
    float[]? _pixels;
    long[]? _labels;

    readonly object _buildLock = new();

    /// <summary>Builds the batches of one step (also usable without the prefetch thread).</summary>
    public StepBatch Build(int step)
    {
        lock (_buildLock) return BuildLocked(step);
    }

    StepBatch BuildLocked(int step)
    {
        int c = _pre.Channels, h = _pre.Height, w = _pre.Width, per = c * h * w;
        var xs = new Tensor[_envs.Count];
        var ys = new Tensor[_envs.Count];
        var pixels = _pixels ??= new float[_batch * per];
        var labels = _labels ??= new long[_batch];
        for (int e = 0; e < _envs.Count; e++)
        {
            var (env, indices) = _envs[e];
            var opts = new ParallelOptions { MaxDegreeOfParallelism = _workers };
            int envIndex = e;
            Parallel.For(0, _batch, opts, j =>
            {
                var pick = new Random(SeedMix.Of(_seed, step, envIndex, j));
                for (int attempt = 0; ; attempt++)
                {
                    if (attempt > 1000)
                        throw new DatasetException($"environment {env.Name}: no readable image found after {attempt} draws");
                    int idx = indices[pick.Next(indices.Length)];
                    var img = _loader.TryLoad(env, idx);
                    if (img is null) continue;
                    var aug = new Random(SeedMix.Of(_seed, step, envIndex, j, attempt, 1));
                    _pre.Train(img, aug, pixels.AsSpan(j * per, per));
                    labels[j] = env.LabelOf(idx);
                    break;
                }
            });
            xs[e] = OnDevice(torch.tensor(pixels, new long[] { _batch, c, h, w }), _device);
            ys[e] = OnDevice(torch.tensor(labels, new long[] { _batch }), _device);
        }
        return new StepBatch(step, xs, ys);
    }

    internal static Tensor OnDevice(Tensor t, Device device)
    {
        if (t.device.type == device.type && t.device.index == device.index) return t;
        var moved = t.to(device);
        t.Dispose();
        return moved;
    }

    /// <summary>The next step's batches, in order. The caller disposes them.</summary>
    public StepBatch Next()
    {
        try
        {
            var b = _queue.Take();
            if (b.Step != _next) throw new InvalidOperationException($"loader out of order: {b.Step} != {_next}");
            _next++;
            return b;
        }
        catch (InvalidOperationException) when (_failure is not null)
        {
            throw _failure is SfMoeException ? _failure : new DatasetException($"data loading failed: {_failure.Message}", _failure);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _cts.Cancel();
        try { _producer.Wait(TimeSpan.FromSeconds(30)); } catch (AggregateException) { }
        while (_queue.TryTake(out var b)) b.Dispose();
        _queue.Dispose();
        _cts.Dispose();
    }
}

/// <summary>
/// One evaluation split (an environment's in or out split). Images are decoded and resized once per run and kept as
/// 8-bit arrays when they fit in the memory budget, so every evaluation after the first costs only forward passes.
/// </summary>
internal sealed class EvalSplit
{
    readonly IDomainEnvironment _env;
    readonly int[] _indices;
    readonly IPreprocessor _pre;
    byte[][]? _cache;
    int[]? _readable;

    /// <summary>A split named e.g. env0_out.</summary>
    public EvalSplit(string name, IDomainEnvironment env, int[] indices, IPreprocessor pre)
    { Name = name; _env = env; _indices = indices; _pre = pre; }

    /// <summary>e.g. env0_in.</summary>
    public string Name { get; }
    /// <summary>Samples in the split.</summary>
    public int Count => _indices.Length;
    /// <summary>Samples that could be read (after <see cref="Prepare"/>).</summary>
    public int ReadableCount => _readable?.Length ?? 0;
    /// <summary>Bytes the cache needs.</summary>
    public long CacheBytes => (long)_indices.Length * _pre.Channels * _pre.Height * _pre.Width;

    /// <summary>Decode and resize every image once, keeping them when <paramref name="keep"/>.</summary>
    public void Prepare(SafeLoader loader, bool keep, int workers)
    {
        if (_readable is not null && (!keep || _cache is not null)) return;
        var imgs = new byte[]?[_indices.Length];
        Parallel.For(0, _indices.Length, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, workers) }, i =>
        {
            var img = loader.TryLoad(_env, _indices[i]);
            if (img is not null) imgs[i] = keep ? _pre.Resize(img).Pixels : Array.Empty<byte>();
        });
        _readable = Enumerable.Range(0, _indices.Length).Where(i => imgs[i] is not null).ToArray();
        if (keep) _cache = imgs.Select(b => b ?? Array.Empty<byte>()).ToArray();
    }

    /// <summary>Accuracy of <paramref name="predict"/> over the readable samples, in batches.</summary>
    public double Accuracy(Func<Tensor, Tensor> predict, SafeLoader loader, int batchSize, int workers, Device device)
    {
        if (_readable is null) Prepare(loader, keep: false, workers);
        int c = _pre.Channels, h = _pre.Height, w = _pre.Width, per = c * h * w;
        long correct = 0, total = 0;
        for (int start = 0; start < _readable!.Length; start += batchSize)
        {
            int n = Math.Min(batchSize, _readable.Length - start);
            var pixels = new float[n * per];
            var labels = new long[n];
            Parallel.For(0, n, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, workers) }, j =>
            {
                int i = _readable[start + j];
                ImageU8 resized;
                if (_cache is not null) resized = new ImageU8(h, w, c, _cache[i]);
                else resized = _pre.Resize(loader.TryLoad(_env, _indices[i]) ?? throw new DatasetException($"{_env.SourceOf(_indices[i])} became unreadable"));
                _pre.ToInput(resized, pixels.AsSpan(j * per, per));
                labels[j] = _env.LabelOf(_indices[i]);
            });
            using var scope = torch.NewDisposeScope();
            var x = TrainStream.OnDevice(torch.tensor(pixels, new long[] { n, c, h, w }), device);
            var y = TrainStream.OnDevice(torch.tensor(labels), device);
            var logits = predict(x);
            correct += logits.argmax(1).eq(y).sum().cpu().item<long>();
            total += n;
        }
        return total == 0 ? double.NaN : (double)correct / total;
    }
}
