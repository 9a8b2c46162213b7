using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using SfMoe.Checkpoints;
using SfMoe.Core;
using SfMoe.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe.Runs;

/// <summary>One training run, prepared (dataset, splits, model, optimizer, resumed state) and then executed.</summary>
internal sealed class TrainingRun : IDisposable
{
    readonly TrainOptions _o;
    readonly RunFolder _folder;
    readonly RunLog _log;
    readonly Device _device;
    readonly IReadOnlyList<string> _envNames;
    readonly Networks.Network _net;
    readonly Train.Learner _learner;
    readonly SafeLoader _loader;
    readonly IPreprocessor _pre;
    readonly List<(IDomainEnvironment Env, int[] In)> _trainEnvs;
    readonly List<EvalSplit> _evalSplits;
    readonly double _stepsPerEpoch;
    readonly int _batch, _steps, _freq, _workers, _start;
    readonly bool _keepEvalImages;
    readonly int _evalBatch;
    readonly JsonObject _args;
    readonly JsonNode _hparams;
    readonly ModelHeader _header;
    readonly List<string> _lines;
    readonly Determinism? _determinism;

    TrainingRun(TrainOptions o, RunFolder folder, RunLog log, Device device, IReadOnlyList<string> envNames, Networks.Network net,
                Train.Learner learner, SafeLoader loader, IPreprocessor pre, List<(IDomainEnvironment, int[])> trainEnvs,
                List<EvalSplit> evalSplits, double stepsPerEpoch, int batch, int steps, int freq, int workers, int start,
                bool keepEvalImages, int evalBatch, JsonObject args, JsonNode hparams, ModelHeader header, List<string> lines, Determinism? determinism)
    {
        _determinism = determinism;
        _o = o; _folder = folder; _log = log; _device = device; _envNames = envNames; _net = net; _learner = learner;
        _loader = loader; _pre = pre; _trainEnvs = trainEnvs; _evalSplits = evalSplits; _stepsPerEpoch = stepsPerEpoch;
        _batch = batch; _steps = steps; _freq = freq; _workers = workers; _start = start; _keepEvalImages = keepEvalImages; _evalBatch = evalBatch;
        _args = args; _hparams = hparams; _header = header; _lines = lines;
    }

    /// <summary>Everything before the first step: data, hyperparameters, model, pretrained weights, splits, and the
    /// saved state when resuming.</summary>
    public static TrainingRun Prepare(TrainOptions o, RunFolder folder, RunLog log)
    {
        var device = Trainer.Device(o.Device);
        var dataset = o.DatasetInstance ?? DatasetCatalog.Open(o, log);
        var spec = dataset.Spec;
        var envNames = dataset.Environments.Select(e => e.Name).ToList();
        ValidateTestEnvs(o.TestEnvs, envNames.Count, spec.Name);

        var algorithm = AlgorithmKind(o.Algorithm);
        var algName = Train.AlgorithmKindModule.name(algorithm);
        var hparams = Hparams.For(algName, spec.Name, o.HparamsSeed, HparamRandom.Instance);
        if (o.BatchSize is int b) hparams["batch_size"] = b;
        if (o.Lr is double lr) hparams["lr"] = lr;
        if (o.WeightDecay is double wd) hparams["weight_decay"] = wd;
        int batch = Convert.ToInt32(hparams["batch_size"]);
        if (batch < 1) throw new ConfigException($"TrainOptions.BatchSize must be >= 1, got {batch}");
        int steps = o.Steps ?? spec.Steps;
        int freq = o.CheckpointFreq ?? spec.CheckpointFreq;
        if (steps < 1) throw new ConfigException($"TrainOptions.Steps must be >= 1, got {steps}");
        if (freq < 1) throw new ConfigException($"TrainOptions.CheckpointFreq must be >= 1, got {freq}");

        // The network: the dataset sets the class count and input channels.
        // Precision: the option's, else (resuming) the run's own, else fp32. The resume check below refuses another.
        var saved0 = o.Resume ? TrainState.PeekSettings(folder.State) : null;
        var precision = o.Precision ?? (saved0 is null ? null : ResultsLog.SavedPrecision(saved0)) ?? Precision.Fp32;
        var coreDeterministic = o.Deterministic && device.type == DeviceType.CUDA;

        var arch = ResolveModel(o, algorithm, spec, log);
        var net = Networks.build(arch, Tensors.DdModule.ofString(o.Device), o.Seed, Convert.ToDouble(hparams["resnet_dropout"]));
        Determinism? determinism = null;
        try
        {
            var (mean, std) = LoadPretrained(o, net, log);
            var pre = o.Preprocessor ?? Preprocessors.For(spec, Config.ArchitectureModule.imgSize(arch), mean, std);
            var optKind = o.Optimizer switch
            {
                Optimizer.Adam => Optim.Kind.AdamL2,
                Optimizer.AdamW => Optim.Kind.AdamW,
                _ => throw new ConfigException($"unknown optimizer {o.Optimizer}: expected Adam or AdamW"),
            };
            var dd = Tensors.DdModule.ofString(o.Device);
            var learner = new Train.Learner(net, algorithm, optKind, Convert.ToDouble(hparams["lr"]),
                                            Convert.ToDouble(hparams["weight_decay"]), SeedMix.Of(o.Seed, 0x5eed), dd,
                                            Precisions.ToCore(precision), coreDeterministic);
            if (precision != Precision.Fp32 || device.type != DeviceType.CPU) log.Info(learner.PrecisionNote);
            if (o.Deterministic)
            {
                (determinism, var detNote) = Determinism.Begin(device);
                log.Info(detNote);
            }

            // Splits (DomainBed: seed_hash(trial_seed, env_i), 20% out).
            var loader = new SafeLoader(log, o.TrainCacheBytes);
            var inSplits = new List<(IDomainEnvironment Env, int[] In, int[] Out)>();
            for (int i = 0; i < dataset.Environments.Count; i++)
            {
                var env = dataset.Environments[i];
                var (outIdx, inIdx) = Splits.EnvSplit(i, env.Count, o.TrialSeed, o.HoldoutFraction);
                inSplits.Add((env, inIdx, outIdx));
            }
            var trainEnvs = inSplits.Select((s, i) => (s, i)).Where(t => !o.TestEnvs.Contains(t.i)).Select(t => (t.s.Env, t.s.In)).ToList();
            double stepsPerEpoch = inSplits.Min(s => (double)s.In.Length / batch);
            var evalSplits = new List<EvalSplit>();
            for (int i = 0; i < inSplits.Count; i++)
            {
                evalSplits.Add(new EvalSplit($"env{i}_in", inSplits[i].Env, inSplits[i].In, pre));
                evalSplits.Add(new EvalSplit($"env{i}_out", inSplits[i].Env, inSplits[i].Out, pre));
            }
            int workers = o.Workers ?? ThreadPlan.Workers(Environment.ProcessorCount);
            if (o.Threads is null)
                torch.set_num_threads(ThreadPlan.Threads(ThreadPlan.StepMacs(Summary.macsPerImage(arch), batch * trainEnvs.Count),
                                                         Environment.ProcessorCount, workers));
            int evalBatch = ThreadPlan.EvalBatch(arch.IsCnnArch, batch * trainEnvs.Count);

            var args = ResultsLog.Args(o, folder.Directory, algName, spec.Name, steps, freq, precision);
            var hparamsJson = JsonSerializer.SerializeToNode(hparams)!;
            var header = new ModelHeader(Config.ArchitectureModule.backbone(arch), ModelSpec.vitJson(arch)?.Value, spec.Classes.Count,
                                         spec.Channels, Config.ArchitectureModule.imgSize(arch), spec.Classes, spec.Name, 0, algName,
                                         hparamsJson.ToJsonString(), pre.Mean, pre.Std);

            // Resume: weights, optimizer, generator, results so far.
            int start = 0;
            var lines = new List<string>();
            if (o.Resume)
            {
                JsonObject saved;
                (start, lines, saved) = TrainState.Load(folder.State, learner);
                var changed = ResultsLog.Changes(ResultsLog.Settings(args, hparamsJson), ResultsLog.Settings(saved));
                if (changed.Count > 0)
                    throw new RunException($"cannot resume {folder.Directory} with other settings: {string.Join("; ", changed)}"
                                           + (changed.Any(c => c.StartsWith("precision ", StringComparison.Ordinal))
                                               ? " (leave TrainOptions.Precision unset to continue in the run's precision)" : ""));
                log.Info($"resuming {folder.Directory} at step {start}");
            }
            ResultsLog.Rewrite(folder.Results, lines);
            log.Info($"dataset {spec.Name}: {string.Join(", ", envNames.Select((n, i) => $"env{i}={n} ({inSplits[i].In.Length}+{inSplits[i].Out.Length})"))}; test envs {string.Join(",", o.TestEnvs)}");
            log.Info($"algorithm {algName}, model {header.Backbone}{(arch is Config.Architecture.VitArch v ? " " + Core.Pattern.print(v.Item.Pattern) : "")}, "
                     + $"{Layers.countParams(net.Module):N0} parameters, batch {batch} x {trainEnvs.Count} envs, {steps} steps, eval every {freq}, "
                     + $"{torch.get_num_threads()} threads + {workers} data workers, eval batch {evalBatch}");

            // Evaluation cache: decode and resize each eval image once, when it fits.
            long cacheBytes = evalSplits.Sum(s => s.CacheBytes);
            bool keep = cacheBytes <= o.EvalCacheBytes;
            if (!keep) log.Info($"evaluation images need {cacheBytes / 1e9:F2} GB, over the cache budget ({o.EvalCacheBytes / 1e9:F2} GB): decoding them at every evaluation");

            return new TrainingRun(o, folder, log, device, envNames, net, learner, loader, pre, trainEnvs, evalSplits, stepsPerEpoch,
                                   batch, steps, freq, workers, start, keep, evalBatch, args, hparamsJson, header, lines, determinism);
        }
        catch
        {
            determinism?.Dispose();
            net.Module.Dispose();
            throw;
        }
    }

    /// <summary>The steps from the start (or the resumed step) to the end, with evaluations and checkpoints.</summary>
    public TrainResult Execute(IProgress<TrainProgress>? progress, CancellationToken ct)
    {
        var evaluations = new List<EvalResult>();
        var sums = new Dictionary<string, double> { ["loss"] = 0, ["aux_loss"] = 0, ["step_time"] = 0 };
        int count = 0;
        var started = Stopwatch.StartNew();
        int ranThisCall = 0;
        using (var stream = new TrainStream(_trainEnvs, _batch, _pre, _o.Seed, _start, _workers, _loader, _device))
        {
            for (int step = _start; step < _steps; step++)
            {
                ct.ThrowIfCancellationRequested();
                var t0 = Stopwatch.GetTimestamp();
                Train.Metrics m;
                using (var sb = stream.Next())
                    m = _learner.Update(ListModule.OfArray(sb.Xs), ListModule.OfArray(sb.Ys));
                double dt = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                if (!double.IsFinite(m.Loss)) throw new RunException($"the loss became {m.Loss} at step {step}; lower the learning rate");
                sums["loss"] += m.Loss; sums["aux_loss"] += m.Aux; sums["step_time"] += dt; count++;
                ranThisCall++;
                EvalResult? ev = null;
                if (step % _freq == 0 || step == _steps - 1)
                {
                    ev = Evaluate(step, sums, count);
                    evaluations.Add(ev);
                    sums = sums.ToDictionary(kv => kv.Key, _ => 0.0); count = 0;
                    Checkpoint(step, ev);
                }
                double rate = started.Elapsed.TotalSeconds / ranThisCall;
                progress?.Report(new TrainProgress(step, _steps, m.Loss, m.Aux, dt, TimeSpan.FromSeconds(rate * (_steps - step - 1)), ev));
                if (_o.StopAfterSteps is int stop && ranThisCall >= stop && step < _steps - 1)
                    return new TrainResult(_folder.Directory, _folder.Model, evaluations, false, _o.TestEnvs, _envNames);
            }
        }
        if (_loader.BadCount > 0) _log.Warn($"{_loader.BadCount} unreadable images were skipped (listed above)");
        AtomicFile.WriteAllText(_folder.Done, "done\n");
        _log.Info($"done: {_steps} steps, results in {_folder.Results}");
        return new TrainResult(_folder.Directory, _folder.Model, evaluations, true, _o.TestEnvs, _envNames);
    }

    /// <summary>Accuracy on every split, with the training metrics averaged since the last evaluation.</summary>
    EvalResult Evaluate(int step, Dictionary<string, double> sums, int count)
    {
        foreach (var s in _evalSplits) s.Prepare(_loader, _keepEvalImages, _workers);
        // A CPU generator (TorchSharp has no other): the core copies its draws to the device.
        using var evalRng = new torch.Generator((ulong)SeedMix.Of(_o.Seed, step, 0xe7a1));
        var accs = new Dictionary<string, double>();
        foreach (var s in _evalSplits)
            accs[s.Name] = s.Accuracy(x => _learner.Predict(x, evalRng), _loader, _evalBatch, _workers, _device);
        double epoch = step / _stepsPerEpoch;
        return new EvalResult(step, epoch, sums["loss"] / count, sums["aux_loss"] / count, sums["step_time"] / count, accs);
    }

    /// <summary>Model file and training state first, then the results line: a kill in between re-runs the interval
    /// on resume.</summary>
    void Checkpoint(int step, EvalResult ev)
    {
        var line = ResultsLog.Line(ev, _args, _hparams, _learner, _o.RecordTimings);
        _lines.Add(line);
        ModelFile.Save(_folder.Model, _net, _header with { Step = step });
        TrainState.Save(_folder.State, _learner, step + 1, _lines, ResultsLog.Settings(_args, _hparams));
        ResultsLog.Append(_folder.Results, line);
    }

    public void Dispose()
    {
        ((IDisposable)_learner).Dispose();
        _determinism?.Dispose();
    }

    static Train.AlgorithmKind AlgorithmKind(Algorithm a) => a switch
    {
        Algorithm.ERM => Train.AlgorithmKind.Erm,
        Algorithm.SFMoE => Train.AlgorithmKind.SfMoeAlg,
        Algorithm.GMoE => Train.AlgorithmKind.GMoeAlg,
        _ => throw new ConfigException($"unknown algorithm {a}: expected ERM, SFMoE or GMoE"),
    };

    /// <summary>Pretrained weights into the network (not on resume: the checkpoint holds the weights); the mean and
    /// std they expect, or nulls.</summary>
    static (float[]? Mean, float[]? Std) LoadPretrained(TrainOptions o, Networks.Network net, RunLog log)
    {
        if (o.Pretrained is null)
        {
            if (o.Experts is not null) throw new ConfigException("TrainOptions.Experts applies with TrainOptions.Pretrained");
            return (null, null);
        }
        if (o.Resume)
        {
            log.Info("TrainOptions.Pretrained is ignored on TrainOptions.Resume (the checkpoint holds the weights)");
            return (null, null);
        }
        if (o.PretrainedFormat is null)
            throw new ConfigException("TrainOptions.Pretrained needs TrainOptions.PretrainedFormat (" + string.Join(", ", Pretrained.Formats) + ")");
        var report = Pretrained.LoadInto(net, o.Pretrained, o.PretrainedFormat, o.Experts);
        foreach (var line in report.Lines()) log.Info(line);
        return (report.Mean, report.Std);
    }

    static void ValidateTestEnvs(IReadOnlyList<int> testEnvs, int n, string dataset)
    {
        if (testEnvs.Count == 0) throw new ConfigException("give at least one test environment (TrainOptions.TestEnvs)");
        foreach (var t in testEnvs)
            if (t < 0 || t >= n) throw new ConfigException($"test env {t} is out of range: {dataset} has environments 0..{n - 1}");
        if (testEnvs.Distinct().Count() != testEnvs.Count) throw new ConfigException("test envs must be distinct");
        if (testEnvs.Count >= n) throw new ConfigException($"every environment of {dataset} is a test env: none is left to train on");
    }

    /// <summary>The model of a run: the options' model (or the algorithm's and dataset's default) with the dataset's
    /// classes and channels.</summary>
    static Config.Architecture ResolveModel(TrainOptions o, Train.AlgorithmKind alg, DatasetSpec spec, RunLog log)
    {
        string? name = o.Model;
        if (name is null && o.ModelConfigJson is null)
            name = (alg.IsErm, spec.Name) switch
            {
                (_, "Synthetic") when alg.IsErm => "vit_test_patch8_32",
                (_, "Synthetic") => alg.IsGMoeAlg ? "gmoe_test_patch8_32" : "sfmoe_test_patch8_32",
                (true, _) when spec.Preprocess == Preprocess.Mnist => "mnist_cnn",
                (true, _) => "resnet50",
                _ when alg.IsGMoeAlg => "gmoe_small_patch16_224",
                _ => "sfmoe_small_patch16_224",
            };
        var source = o.ModelConfigJson is not null ? ModelSpec.Source.NewJson(o.ModelConfigJson) : ModelSpec.Source.NewNamed(name!);
        var declared = ModelSpec.resolve(ModelSpec.Create(source, o.Pattern, null, null, null));
        var data = new ModelSpec.DataShape(spec.Classes.Count, spec.Channels, spec.Height);
        var arch = ModelSpec.resolve(ModelSpec.Create(source, o.Pattern, null, null, FSharpOption<ModelSpec.DataShape>.Some(data)));
        if (arch is not Config.Architecture.VitArch vit)
        {
            if (!alg.IsErm) throw new ConfigException($"{Train.AlgorithmKindModule.name(alg)} needs a ViT model with sparse blocks, not {Config.ArchitectureModule.backbone(arch)}");
            return arch;
        }
        var cfg = vit.Item;
        if (Config.ArchitectureModule.numClasses(declared) != cfg.NumClasses)
            log.Info($"model num_classes {Config.ArchitectureModule.numClasses(declared)} replaced by the dataset's {cfg.NumClasses}");
        if (Config.ArchitectureModule.inChans(declared) != cfg.InChans)
            log.Info($"model in_chans {Config.ArchitectureModule.inChans(declared)} replaced by the dataset's {cfg.InChans}");
        bool sparse = Core.Pattern.expand(cfg.Pattern).Any(k => k.IsSparse);
        if (!alg.IsErm && !sparse) log.Warn($"{Train.AlgorithmKindModule.name(alg)} with a model without sparse blocks is ERM");
        if (spec.Height != cfg.ImgSize || spec.Width != cfg.ImgSize)
            log.Info($"images ({spec.Height}x{spec.Width}) are resized to the model's input size {cfg.ImgSize}x{cfg.ImgSize}");
        return arch;
    }
}
