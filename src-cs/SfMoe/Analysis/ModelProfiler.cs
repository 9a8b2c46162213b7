using System.Diagnostics;
using System.Runtime.InteropServices;
using SfMoe.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe.Analysis;

/// <summary>One row of a profile: a part of the model (embedding, a block, norm, head).</summary>
/// <param name="Name">State-dict prefix, e.g. <c>blocks.3</c>.</param>
/// <param name="Kind">"S", "F", or what the part is.</param>
/// <param name="Parameters">Parameters.</param>
/// <param name="ActiveParameters">Parameters used per token (a sparse block: router + k of its E experts).</param>
/// <param name="Macs">Multiply-accumulates per image (a sparse block counts its router and k experts per token).</param>
public sealed record ProfilePart(string Name, string Kind, long Parameters, long ActiveParameters, long Macs);

/// <summary>Timings and peak memory of one model (absent when not measured).</summary>
/// <param name="BatchSize">Images per batch.</param>
/// <param name="Threads">CPU threads.</param>
/// <param name="Device">The device the model ran on ("cpu", "cuda", ...).</param>
/// <param name="Precision">The precision it computed in ("fp32", "tf32", "bf16").</param>
/// <param name="ForwardMs">Median forward pass in eval mode without gradients, per batch.</param>
/// <param name="TrainStepMs">Median training step (forward, backward, Adam), per batch.</param>
/// <param name="PeakMemoryGb">Peak resident memory of the process while the model alone was built and ran a training step
/// and a forward pass (GiB; on Linux the peak mark is reset before each model, so the two figures are comparable).</param>
/// <param name="BaselineMemoryGb">Resident memory before the model was built (GiB).</param>
public sealed record ProfileTimings(int BatchSize, int Threads, string Device, string Precision, double ForwardMs, double TrainStepMs, double PeakMemoryGb, double BaselineMemoryGb);

/// <summary>The profile of one model.</summary>
public sealed record ModelProfile(string Name, string Pattern, int ImageSize, IReadOnlyList<ProfilePart> Parts, ProfileTimings? Timings)
{
    /// <summary>Total parameters.</summary>
    public long TotalParameters => Parts.Sum(p => p.Parameters);
    /// <summary>Parameters used per token.</summary>
    public long ActiveParameters => Parts.Sum(p => p.ActiveParameters);
    /// <summary>Multiply-accumulates per image.</summary>
    public long TotalMacs => Parts.Sum(p => p.Macs);
}

/// <summary>A model's profile next to its dense twin's.</summary>
public sealed record ProfileComparison(ModelProfile Model, ModelProfile DenseTwin);

/// <summary>
/// Efficiency report: parameters (total and active per token), multiply-accumulates per block (the closed forms of
/// <c>Summary.table</c>), measured forward and training-step time and peak memory, for a model and its dense twin (the
/// same model with every block a fusion block).
/// </summary>
public static class ModelProfiler
{
    static ModelProfiler() { Native.ensure(); }

    /// <summary>A registry model's or a JSON config's settings with optional overrides.</summary>
    internal static Config.VitConfig ConfigOf(string? model, string? configJson, string? pattern, int? imageSize, int? numClasses)
    {
        if ((model is null) == (configJson is null)) throw new ConfigException("give a model name or a model config, not both or neither");
        var source = model is not null ? ModelSpec.Source.NewNamed(model) : ModelSpec.Source.NewJson(configJson!);
        var arch = ModelSpec.resolve(ModelSpec.Create(source, pattern, numClasses, imageSize, null));
        return arch is Config.Architecture.VitArch v ? v.Item
            : throw new ConfigException($"{model} is a CNN baseline: profiles compare a ViT with its dense twin");
    }

    /// <summary>The dense twin: the same config with every block a fusion block.</summary>
    internal static Config.VitConfig DenseTwin(Config.VitConfig c) => Config.VitConfigModule.denseTwin(c);

    /// <summary>Per-part parameters, active parameters and MACs of a config (<c>Summary.table</c>).</summary>
    internal static IReadOnlyList<ProfilePart> Table(Config.VitConfig c) =>
        Summary.table(c).Select(t => new ProfilePart(t.Item1, t.Item2, t.Item3, t.Item4, t.Item5)).ToArray();

    /// <summary>The static part of the profile (no measurement) of a registry model or JSON config.</summary>
    public static ProfileComparison Describe(string? model = null, string? configJson = null, string? pattern = null, int? imageSize = null)
    {
        var c = ConfigOf(model, configJson, pattern, imageSize, null);
        var name = model ?? "config";
        return new ProfileComparison(Make(name, c, null), Make(name + " (dense twin)", DenseTwin(c), null));
    }

    static ModelProfile Make(string name, Config.VitConfig c, ProfileTimings? t) =>
        new(name, Core.Pattern.print(c.Pattern), c.ImgSize, Table(c), t);

    /// <summary>
    /// Profiles a registry model (or a JSON config) and its dense twin: the closed-form table and, with
    /// <paramref name="repeats"/> &gt; 0, measured forward and training-step times (medians after <paramref name="warmup"/>
    /// untimed runs, the two models interleaved so both see the same machine load; the device synchronised before
    /// every clock read) and the peak memory of each alone, on <paramref name="device"/> in <paramref name="precision"/>.
    /// </summary>
    public static ProfileComparison Profile(string? model = null, string? configJson = null, string? pattern = null,
        int? imageSize = null, int batchSize = 8, int warmup = 2, int repeats = 5, string device = "cpu",
        Precision precision = Precision.Fp32)
    {
        var corePrecision = Precisions.ToCore(precision);
        if (batchSize < 1) throw new ConfigException($"batch size must be >= 1, got {batchSize}");
        var c = ConfigOf(model, configJson, pattern, imageSize, null);
        var twin = DenseTwin(c);
        var name = model ?? "config";
        if (repeats < 1) return new ProfileComparison(Make(name, c, null), Make(name + " (dense twin)", twin, null));
        var dd = Tensors.DdModule.parse(device);
        if (dd.IsError) throw new ConfigException(dd.ErrorValue);
        Tensors.PrecisionModule.configure(dd.ResultValue.Device, corePrecision);
        var (tm, tt) = Measure(c, twin, dd.ResultValue, corePrecision, batchSize, warmup, repeats);
        return new ProfileComparison(Make(name, c, tm), Make(name + " (dense twin)", twin, tt));
    }

    /// <summary>A model, its optimizer and a random batch, ready to time.</summary>
    sealed class Bench : IDisposable
    {
        public readonly Vit.SfMoeVit Model;
        readonly Train.Learner _learner;
        readonly Tensor _x, _y;
        readonly Microsoft.FSharp.Collections.FSharpList<Tensor> _xs, _ys;
        readonly Tensors.Precision _precision;

        public Bench(Config.VitConfig c, Tensors.Dd dd, Tensors.Precision precision, int batch)
        {
            _precision = precision;
            Model = new Vit.SfMoeVit(c, dd, 0L);
            _learner = new Train.Learner(Networks.Network.NewVitNet(Model), Train.AlgorithmKind.SfMoeAlg, Optim.Kind.AdamL2, 1e-5, 0.0, 0L, dd,
                                         precision, false);
            using var gen = new Generator(0); // drawn on the CPU, then moved
            _x = torch.randn(new long[] { batch, c.InChans, c.ImgSize, c.ImgSize }, generator: gen).to(dd.Device);
            _y = torch.randint(c.NumClasses, new long[] { batch }, generator: gen).to(dd.Device);
            _xs = Microsoft.FSharp.Collections.ListModule.OfSeq(new[] { _x });
            _ys = Microsoft.FSharp.Collections.ListModule.OfSeq(new[] { _y });
        }

        public void Step() { using var s = NewDisposeScope(); _learner.Update(_xs, _ys); }

        public void Forward()
        {
            using var s = NewDisposeScope();
            using var _ = no_grad();
            bool was = Model.training;
            Model.eval();
            var ctx = new Tensors.Ctx(false, Microsoft.FSharp.Core.FSharpOption<Tensors.Rng>.None, _precision, false);
            using (var o = Model.RunWith(ctx, _x, false, false)) { }
            if (was) Model.train();
        }

        public void Dispose() { ((IDisposable)_learner).Dispose(); _x.Dispose(); _y.Dispose(); Model.Dispose(); }
    }

    /// <summary>
    /// Peak memory of each model alone (built, one training step, one forward; the peak mark reset before each), then
    /// the timings with both models alive, interleaved step by step so both see the same machine load.
    /// </summary>
    static (ProfileTimings, ProfileTimings) Measure(Config.VitConfig a, Config.VitConfig b, Tensors.Dd dd, Tensors.Precision precision, int batch, int warmup, int repeats)
    {
        (double Peak, double Baseline) Mem(Config.VitConfig c)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            Memory.Trim();
            double baseline = Memory.CurrentRssGb();
            Memory.ResetPeak();
            using (var m = new Bench(c, dd, precision, batch)) { m.Step(); m.Forward(); }
            return (Memory.PeakRssGb(), baseline);
        }
        Mem(b);   // first use: libtorch's one-time allocations (thread pools, kernels) would land on the first model
        var ma = Mem(a);
        var mb = Mem(b);
        using var ba = new Bench(a, dd, precision, batch);
        using var bb = new Bench(b, dd, precision, batch);
        double Time(Action f)
        {
            Tensors.synchronize(dd.Device);
            var sw = Stopwatch.StartNew();
            f();
            Tensors.synchronize(dd.Device);
            return sw.Elapsed.TotalMilliseconds;
        }
        for (int i = 0; i < warmup; i++) { ba.Step(); bb.Step(); ba.Forward(); bb.Forward(); }
        var ts = new List<double>[4];
        for (int k = 0; k < 4; k++) ts[k] = [];
        for (int i = 0; i < repeats; i++)
        {
            ts[0].Add(Time(ba.Step)); ts[1].Add(Time(bb.Step));
            ts[2].Add(Time(ba.Forward)); ts[3].Add(Time(bb.Forward));
        }
        static double Median(List<double> v)
        {
            v.Sort();
            return v.Count % 2 == 1 ? v[v.Count / 2] : (v[v.Count / 2 - 1] + v[v.Count / 2]) / 2;
        }
        int threads = torch.get_num_threads();
        string dev = dd.Device.ToString(), prec = Tensors.PrecisionModule.name(precision);
        return (new ProfileTimings(batch, threads, dev, prec, Median(ts[2]), Median(ts[0]), ma.Peak, ma.Baseline),
                new ProfileTimings(batch, threads, dev, prec, Median(ts[3]), Median(ts[1]), mb.Peak, mb.Baseline));
    }

    /// <summary>Process memory on Linux (/proc/self); other systems report the .NET process counters.</summary>
    static class Memory
    {
        [DllImport("libc", EntryPoint = "malloc_trim")]
        static extern int MallocTrim(UIntPtr pad);

        public static void Trim()
        {
            if (!OperatingSystem.IsLinux()) return;
            try { MallocTrim(UIntPtr.Zero); } catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        }

        /// <summary>Resets the kernel's peak-RSS mark (VmHWM) to the current RSS.</summary>
        public static void ResetPeak()
        {
            if (!OperatingSystem.IsLinux()) return;
            try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }

        static double? Status(string key)
        {
            if (!OperatingSystem.IsLinux()) return null;
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith(key + ":", StringComparison.Ordinal))
                    return double.Parse(line[(key.Length + 1)..].Trim().Split(' ')[0]) * 1024 / (1L << 30);
            return null;
        }

        public static double CurrentRssGb() => Status("VmRSS") ?? Process.GetCurrentProcess().WorkingSet64 / (double)(1L << 30);
        public static double PeakRssGb() => Status("VmHWM") ?? Process.GetCurrentProcess().PeakWorkingSet64 / (double)(1L << 30);
    }
}
