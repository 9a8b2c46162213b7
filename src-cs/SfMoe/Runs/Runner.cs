using System.Diagnostics;
using System.Text;
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

/// <summary>
/// DomainBed's train.py for SfMoe: splits every environment into in/out, trains on the in-splits of the training
/// environments (one minibatch from each per step), evaluates every environment's in and out split at step 0, every
/// checkpoint_freq steps and at the last step, and appends one line per evaluation to results.jsonl. A checkpoint
/// (model file + training state) is written at every evaluation, so a killed run resumes exactly.
/// </summary>
public static class Trainer
{
    /// <summary>Runs (or resumes) a training run, calling <paramref name="onProgress"/> after every step, in order,
    /// on the training thread.</summary>
    public static TrainResult Run(TrainOptions o, Action<TrainProgress> onProgress, CancellationToken ct = default) =>
        Run(o, new CallbackProgress(onProgress), ct);

    sealed class CallbackProgress(Action<TrainProgress> f) : IProgress<TrainProgress>
    {
        public void Report(TrainProgress value) => f(value);
    }

    /// <summary>Runs (or resumes) a training run.</summary>
    /// <exception cref="SfMoeException">Bad options, data or files; the message says which.</exception>
    public static TrainResult Run(TrainOptions o, IProgress<TrainProgress>? progress = null, CancellationToken ct = default)
    {
        Native.ensure();
        var outDir = Path.GetFullPath(o.OutputDir);
        var resultsPath = Path.Combine(outDir, "results.jsonl");
        var statePath = Path.Combine(outDir, "train_state.safetensors");
        var modelPath = Path.Combine(outDir, "model.safetensors");
        var donePath = Path.Combine(outDir, "done");
        if (o.Resume)
        {
            if (!File.Exists(statePath))
                throw new RunException($"--resume: {statePath} not found (nothing to resume; run without --resume)");
        }
        else if (File.Exists(resultsPath) || File.Exists(statePath))
            throw new RunException($"{outDir} already holds a run; pass --resume to continue it or choose another --output-dir");
        Directory.CreateDirectory(outDir);
        if (File.Exists(donePath) && o.Resume)
            throw new RunException($"{outDir}: the run is already done");

        if (o.Threads is int th) { if (th < 1) throw new RunException($"threads must be >= 1, got {th}"); torch.set_num_threads(th); }
        using var log = new RunLog(Path.Combine(outDir, "log.txt"), o.Quiet);
        var device = Device(o.Device);
        var dataset = o.DatasetInstance ?? DatasetCatalog.Open(o, log);
        var spec = dataset.Spec;
        var envNames = dataset.Environments.Select(e => e.Name).ToList();
        ValidateTestEnvs(o.TestEnvs, envNames.Count, spec.Name);

        var algorithm = Train.AlgorithmKindModule.tryParse(o.Algorithm);
        if (algorithm is null) throw new RunException($"unknown algorithm {o.Algorithm}: expected ERM, SFMoE or GMoE");
        var algName = Train.AlgorithmKindModule.name(algorithm.Value);
        var hparams = Hparams.For(algName, spec.Name, o.HparamsSeed, HparamRandom.Instance);
        if (o.BatchSize is int b) hparams["batch_size"] = b;
        if (o.Lr is double lr) hparams["lr"] = lr;
        if (o.WeightDecay is double wd) hparams["weight_decay"] = wd;
        int batch = Convert.ToInt32(hparams["batch_size"]);
        if (batch < 1) throw new RunException($"batch size must be >= 1, got {batch}");
        int steps = o.Steps ?? spec.Steps;
        int freq = o.CheckpointFreq ?? spec.CheckpointFreq;
        if (steps < 1) throw new RunException($"steps must be >= 1, got {steps}");
        if (freq < 1) throw new RunException($"checkpoint frequency must be >= 1, got {freq}");

        // The network: the dataset sets the class count and input channels.
        var arch = ResolveModel(o, algorithm.Value, spec, log);
        var backbone = Config.ArchitectureModule.backbone(arch);
        var vitJson = ModelSpec.vitJson(arch)?.Value;
        var imgSize = Config.ArchitectureModule.imgSize(arch);
        var net = Networks.build(arch, Tensors.DdModule.ofString(o.Device), o.Seed, Convert.ToDouble(hparams["resnet_dropout"]));
        float[]? mean = null, std = null;
        if (o.Pretrained is not null)
        {
            if (o.Resume) log.Info("--pretrained is ignored on --resume (the checkpoint holds the weights)");
            else
            {
                if (o.PretrainedFormat is null) throw new RunException("--pretrained needs --pretrained-format (" + string.Join(", ", Pretrained.Formats) + ")");
                var report = Pretrained.LoadInto(net, o.Pretrained, o.PretrainedFormat, o.Experts);
                foreach (var line in report.Lines()) log.Info(line);
                (mean, std) = (report.Mean, report.Std);
            }
        }
        else if (o.Experts is not null) throw new RunException("--experts applies with --pretrained");
        var pre = o.Preprocessor ?? Preprocessors.For(spec, imgSize, mean, std);
        var optKind = o.Optimizer.ToLowerInvariant() switch
        {
            "adam" => Optim.Kind.AdamL2,
            "adamw" => Optim.Kind.AdamW,
            _ => throw new RunException($"unknown optimizer {o.Optimizer}: expected adam or adamw"),
        };
        var dd = Tensors.DdModule.parse(o.Device).ResultValue;
        using var learner = new Train.Learner(net, algorithm.Value, optKind, Convert.ToDouble(hparams["lr"]),
                                              Convert.ToDouble(hparams["weight_decay"]), SeedMix.Of(o.Seed, 0x5eed), dd);

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
            torch.set_num_threads(ThreadPlan.Threads(Summary.macsPerImage(arch), Environment.ProcessorCount, workers));

        var args = ArgsJson(o, outDir, algName, spec.Name, steps, freq);
        var hparamsJson = JsonSerializer.SerializeToNode(hparams)!;
        var header = new ModelHeader(backbone, vitJson, spec.Classes.Count, spec.Channels, imgSize, spec.Classes, spec.Name, 0, algName,
                                     hparamsJson.ToJsonString(), pre.Mean, pre.Std);

        // Resume: weights, optimizer, generator, results so far.
        int start = 0;
        var lines = new List<string>();
        if (o.Resume)
        {
            JsonObject saved;
            (start, lines, saved) = TrainState.Load(statePath, learner);
            var changed = Settings(args, hparamsJson).Where(kv => kv.Key != "output_dir" && !JsonNode.DeepEquals(kv.Value, Settings(saved)[kv.Key]))
                              .Select(kv => $"{kv.Key} was {Settings(saved)[kv.Key]?.ToJsonString() ?? "null"}, now {kv.Value?.ToJsonString() ?? "null"}")
                              .ToList();
            if (changed.Count > 0)
                throw new RunException($"cannot resume {outDir} with other settings: {string.Join("; ", changed)}");
            log.Info($"resuming {outDir} at step {start}");
        }
        WriteLines(resultsPath, lines);
        log.Info($"dataset {spec.Name}: {string.Join(", ", envNames.Select((n, i) => $"env{i}={n} ({inSplits[i].In.Length}+{inSplits[i].Out.Length})"))}; test envs {string.Join(",", o.TestEnvs)}");
        log.Info($"algorithm {algName}, model {backbone}{(arch is Config.Architecture.VitArch v ? " " + Core.Pattern.print(v.Item.Pattern) : "")}, "
                 + $"{Layers.countParams(net.Module):N0} parameters, batch {batch} x {trainEnvs.Count} envs, {steps} steps, eval every {freq}, "
                 + $"{torch.get_num_threads()} threads + {workers} data workers");

        // Evaluation cache: decode and resize each eval image once, when it fits.
        long cacheBytes = evalSplits.Sum(s => s.CacheBytes);
        bool keep = cacheBytes <= o.EvalCacheBytes;
        if (!keep) log.Info($"evaluation images need {cacheBytes / 1e9:F2} GB, over the cache budget ({o.EvalCacheBytes / 1e9:F2} GB): decoding them at every evaluation");

        var evaluations = new List<EvalResult>();
        var sums = new Dictionary<string, double> { ["loss"] = 0, ["aux_loss"] = 0, ["step_time"] = 0 };
        int count = 0;
        var started = Stopwatch.StartNew();
        int ranThisCall = 0;
        using (var stream = new TrainStream(trainEnvs, batch, pre, o.Seed, start, workers, loader, device))
        {
            for (int step = start; step < steps; step++)
            {
                ct.ThrowIfCancellationRequested();
                var t0 = Stopwatch.GetTimestamp();
                Train.Metrics m;
                using (var sb = stream.Next())
                    m = learner.Update(ListModule.OfArray(sb.Xs), ListModule.OfArray(sb.Ys));
                double dt = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                if (!double.IsFinite(m.Loss)) throw new RunException($"the loss became {m.Loss} at step {step}; lower the learning rate");
                sums["loss"] += m.Loss; sums["aux_loss"] += m.Aux; sums["step_time"] += dt; count++;
                ranThisCall++;
                EvalResult? ev = null;
                if (step % freq == 0 || step == steps - 1)
                {
                    foreach (var s in evalSplits) s.Prepare(loader, keep, workers);
                    // A CPU generator (TorchSharp has no other): the core copies its draws to the device.
                    using var evalRng = new torch.Generator((ulong)SeedMix.Of(o.Seed, step, 0xe7a1));
                    var accs = new Dictionary<string, double>();
                    foreach (var s in evalSplits)
                        accs[s.Name] = s.Accuracy(x => learner.Predict(x, evalRng), loader, 64, workers, device);
                    double epoch = step / stepsPerEpoch;
                    ev = new EvalResult(step, epoch, sums["loss"] / count, sums["aux_loss"] / count, sums["step_time"] / count, accs);
                    evaluations.Add(ev);
                    var line = ResultLine(ev, args, hparamsJson, learner, o.RecordTimings);
                    lines.Add(line);
                    sums = sums.ToDictionary(kv => kv.Key, _ => 0.0); count = 0;
                    // Checkpoint first, then the log line: a kill in between re-runs the interval on resume.
                    ModelFile.Save(modelPath, net, header with { Step = step });
                    TrainState.Save(statePath, learner, step + 1, lines, Settings(args, hparamsJson));
                    AppendLine(resultsPath, line);
                }
                double rate = started.Elapsed.TotalSeconds / ranThisCall;
                progress?.Report(new TrainProgress(step, steps, m.Loss, m.Aux, dt, TimeSpan.FromSeconds(rate * (steps - step - 1)), ev));
                if (o.StopAfterSteps is int stop && ranThisCall >= stop && step < steps - 1)
                    return new TrainResult(outDir, modelPath, evaluations, false, o.TestEnvs, envNames);
            }
        }
        if (loader.BadCount > 0) log.Warn($"{loader.BadCount} unreadable images were skipped (listed above)");
        File.WriteAllText(donePath, "done\n");
        log.Info($"done: {steps} steps, results in {resultsPath}");
        return new TrainResult(outDir, modelPath, evaluations, true, o.TestEnvs, envNames);
    }

    /// <summary>The settings that make a run what it is: args and effective hyperparameters, flat (hparams.lr, ...).</summary>
    static JsonObject Settings(JsonObject args, JsonNode? hparams = null)
    {
        if (hparams is null) return args;   // already flat (as saved)
        var flat = (JsonObject)args.DeepClone();
        foreach (var (k, v) in hparams.AsObject()) flat["hparams." + k] = v?.DeepClone();
        return flat;
    }

    internal static Device Device(string device)
    {
        var dd = Tensors.DdModule.parse(device);
        if (dd.IsError) throw new RunException(dd.ErrorValue);
        return dd.ResultValue.Device;
    }

    static void ValidateTestEnvs(IReadOnlyList<int> testEnvs, int n, string dataset)
    {
        if (testEnvs.Count == 0) throw new RunException("give at least one --test-env");
        foreach (var t in testEnvs)
            if (t < 0 || t >= n) throw new RunException($"test env {t} is out of range: {dataset} has environments 0..{n - 1}");
        if (testEnvs.Distinct().Count() != testEnvs.Count) throw new RunException("test envs must be distinct");
        if (testEnvs.Count >= n) throw new RunException($"every environment of {dataset} is a test env: none is left to train on");
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

    static JsonObject ArgsJson(TrainOptions o, string outDir, string alg, string dataset, int steps, int freq) => new()
    {
        ["algorithm"] = alg,
        ["checkpoint_freq"] = freq,
        ["data_dir"] = o.DataDir is null ? null : Path.GetFullPath(o.DataDir),
        ["dataset"] = dataset,
        ["device"] = o.Device,
        ["holdout_fraction"] = o.HoldoutFraction,
        ["hparams"] = null,
        ["hparams_seed"] = o.HparamsSeed,
        ["model"] = o.Model,
        ["optimizer"] = o.Optimizer,
        ["output_dir"] = outDir,
        ["pattern"] = o.Pattern,
        ["save_model_every_checkpoint"] = false,
        ["seed"] = o.Seed,
        ["skip_model_save"] = false,
        ["steps"] = steps,
        ["task"] = "domain_generalization",
        ["test_envs"] = new JsonArray(o.TestEnvs.Select(t => (JsonNode)t).ToArray()),
        ["trial_seed"] = o.TrialSeed,
        ["uda_holdout_fraction"] = 0,
    };

    /// <summary>One results.jsonl line in DomainBed's schema (sorted keys), plus routing statistics.</summary>
    static string ResultLine(EvalResult ev, JsonObject args, JsonNode hparams, Train.Learner learner, bool timings)
    {
        var r = new SortedDictionary<string, JsonNode?>(StringComparer.Ordinal)
        {
            ["args"] = args.DeepClone(),
            ["aux_loss"] = ev.AuxLoss,
            ["epoch"] = ev.Epoch,
            ["hparams"] = hparams.DeepClone(),
            ["loss"] = ev.Loss,
            ["mem_gb"] = timings ? Process.GetCurrentProcess().PeakWorkingSet64 / (double)(1L << 30) : 0.0,
            ["step"] = ev.Step,
            ["step_time"] = timings ? ev.StepTime : 0.0,
        };
        foreach (var (k, v) in ev.Accuracies) r[k + "_acc"] = v;
        var routing = new JsonObject();
        foreach (var t in learner.TakeRoutingStats())
        {
            var s = t.Item2;
            routing[$"blocks.{t.Item1}"] = new JsonObject
            {
                ["load"] = new JsonArray(s.LoadFractions.Select(x => (JsonNode)Math.Round(x, 6)).ToArray()),
                ["dropped_token_fraction"] = Math.Round(s.DroppedFraction, 6),
            };
        }
        if (routing.Count > 0) r["routing"] = routing;
        var o = new JsonObject();
        foreach (var (k, v) in r) o[k] = v;
        return o.ToJsonString();
    }

    static void WriteLines(string path, List<string> lines)
    {
        AtomicFile.WriteAllText(path, string.Concat(lines.Select(l => l + "\n")));
    }

    static void AppendLine(string path, string line)
    {
        using var f = new FileStream(path, FileMode.Append, FileAccess.Write);
        var bytes = Encoding.UTF8.GetBytes(line + "\n");
        f.Write(bytes);
        f.Flush(true);
    }
}

/// <summary>The resumable state of a run: weights, optimizer, the run's generator, the next step and the results so far.</summary>
internal static class TrainState
{
    public static void Save(string path, Train.Learner learner, int nextStep, List<string> lines, JsonObject args)
    {
        using var scope = torch.NewDisposeScope();
        var tensors = new List<Tuple<string, Tensor>>();
        foreach (var (k, v) in learner.Network.Module.state_dict()) tensors.Add(Tuple.Create("model." + k, v));
        var (optState, optStep) = learner.Optimizer.State.ToValueTuple();
        foreach (var t in optState) tensors.Add(Tuple.Create("optimizer." + t.Item1, t.Item2));
        tensors.Add(Tuple.Create("rng", learner.Generator.get_state()));
        var meta = new Dictionary<string, string>
        {
            ["format"] = "sfmoe-train-state-1",
            ["next_step"] = nextStep.ToString(),
            ["optimizer_step"] = optStep.ToString(),
            ["results"] = JsonSerializer.Serialize(lines),
            ["args"] = args.ToJsonString(),
        };
        SafeTensors.write(path, MapModule.OfSeq(meta.Select(kv => Tuple.Create(kv.Key, kv.Value))), ListModule.OfSeq(tensors));
    }

    public static (int NextStep, List<string> Lines, JsonObject Args) Load(string path, Train.Learner learner)
    {
        SafeTensors.Contents c;
        try { c = SafeTensors.read(path); }
        catch (CheckpointException e) { throw new RunException($"cannot resume: {e.Message}", e); }
        using var _ = c;
        var meta = c.Metadata;
        if (!meta.TryGetValue("format", out var fmt) || fmt != "sfmoe-train-state-1")
            throw new RunException($"cannot resume: {path} is not an SfMoe training state");
        var model = c.Tensors.Where(t => t.Item1.StartsWith("model.")).Select(t => Tuple.Create(t.Item1["model.".Length..], t.Item2));
        try { Weights.load(true, learner.Network.Module, ListModule.OfSeq(model)); }
        catch (CheckpointException e) { throw new RunException($"cannot resume from {path}: the model differs ({e.Message})", e); }
        var opt = c.Tensors.Where(t => t.Item1.StartsWith("optimizer.")).Select(t => Tuple.Create(t.Item1["optimizer.".Length..], t.Item2));
        try { learner.Optimizer.LoadState(ListModule.OfSeq(opt), long.Parse(meta["optimizer_step"])); }
        catch (CheckpointException e) { throw new RunException($"cannot resume from {path}: {e.Message}", e); }
        var rng = c.Find("rng") ?? throw new RunException($"cannot resume: {path} lacks the generator state");
        learner.Generator.set_state(rng.Value);
        var lines = JsonSerializer.Deserialize<List<string>>(meta["results"]) ?? new List<string>();
        var args = JsonNode.Parse(meta["args"]) as JsonObject ?? new JsonObject();
        return (int.Parse(meta["next_step"]), lines, args);
    }
}
