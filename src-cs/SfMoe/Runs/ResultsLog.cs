using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using SfMoe.Core;

namespace SfMoe.Runs;

/// <summary>
/// results.jsonl in DomainBed's schema: the run's args (DomainBed's keys), one line per evaluation with sorted keys
/// (accuracies, averaged training metrics, hparams) plus SfMoe's routing statistics, and the settings a resume must
/// not change.
/// </summary>
internal static class ResultsLog
{
    /// <summary>DomainBed's args object of a run.</summary>
    public static JsonObject Args(TrainOptions o, string outDir, string alg, string dataset, int steps, int freq, Precision precision) => new()
    {
        ["algorithm"] = alg,
        ["checkpoint_freq"] = freq,
        ["data_dir"] = o.DataDir is null ? null : Path.GetFullPath(o.DataDir),
        ["dataset"] = dataset,
        ["deterministic"] = o.Deterministic,
        ["device"] = o.Device,
        ["holdout_fraction"] = o.HoldoutFraction,
        ["hparams"] = null,
        ["hparams_seed"] = o.HparamsSeed,
        ["model"] = o.Model,
        ["optimizer"] = OptimizerName(o.Optimizer),
        ["output_dir"] = outDir,
        ["pattern"] = o.Pattern,
        ["precision"] = Precisions.Name(precision),
        ["save_model_every_checkpoint"] = false,
        ["seed"] = o.Seed,
        ["skip_model_save"] = false,
        ["steps"] = steps,
        ["task"] = "domain_generalization",
        ["test_envs"] = new JsonArray(o.TestEnvs.Select(t => (JsonNode)t).ToArray()),
        ["trial_seed"] = o.TrialSeed,
        ["uda_holdout_fraction"] = 0,
    };

    /// <summary>The optimizer's name in args ("adam", "adamw").</summary>
    public static string OptimizerName(Optimizer o) => o switch
    {
        Optimizer.Adam => "adam",
        Optimizer.AdamW => "adamw",
        _ => throw new ConfigException($"unknown optimizer {o}: expected Adam or AdamW"),
    };

    /// <summary>The settings that make a run what it is: args and effective hyperparameters, flat (hparams.lr, ...).</summary>
    public static JsonObject Settings(JsonObject args, JsonNode? hparams = null)
    {
        if (hparams is null) return args;   // already flat (as saved)
        var flat = (JsonObject)args.DeepClone();
        foreach (var (k, v) in hparams.AsObject()) flat["hparams." + k] = v?.DeepClone();
        return flat;
    }

    /// <summary>Settings a resume may change: where the run lives, and whether CUDA kernels are deterministic (how the
    /// same computation is carried out, not what it is).</summary>
    static readonly HashSet<string> Changeable = ["output_dir", "deterministic"];

    /// <summary>The values of args keys added after runs were first saved, for states saved without them.</summary>
    static readonly Dictionary<string, JsonNode> AddedLater = new() { ["precision"] = "fp32" };

    /// <summary>What differs between the settings of a run and those it was saved with (output_dir and deterministic
    /// aside).</summary>
    public static List<string> Changes(JsonObject now, JsonObject saved)
    {
        JsonNode? Saved(string k) => saved.ContainsKey(k) ? saved[k] : AddedLater.GetValueOrDefault(k);
        return now.Where(kv => !Changeable.Contains(kv.Key) && !JsonNode.DeepEquals(kv.Value, Saved(kv.Key)))
                  .Select(kv => $"{kv.Key} was {Saved(kv.Key)?.ToJsonString() ?? "null"}, now {kv.Value?.ToJsonString() ?? "null"}")
                  .ToList();
    }

    /// <summary>The precision a saved run was trained in (fp32 for runs saved before precisions existed), or null
    /// when the settings name none that is known.</summary>
    public static Precision? SavedPrecision(JsonObject saved) =>
        saved.ContainsKey("precision") ? Precisions.TryParse(saved["precision"]?.GetValueKind() == System.Text.Json.JsonValueKind.String ? saved["precision"]!.GetValue<string>() : null)
                                       : Precision.Fp32;

    /// <summary>One results.jsonl line (sorted keys), plus routing statistics.</summary>
    public static string Line(EvalResult ev, JsonObject args, JsonNode hparams, Train.Learner learner, bool timings)
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

    /// <summary>Rewrites the file with these lines (atomically).</summary>
    public static void Rewrite(string path, IEnumerable<string> lines) =>
        AtomicFile.WriteAllText(path, string.Concat(lines.Select(l => l + "\n")));

    /// <summary>Appends one line and flushes it to disk (DomainBed's append-only log).</summary>
    public static void Append(string path, string line)
    {
        using var f = new FileStream(path, FileMode.Append, FileAccess.Write);
        f.Write(Encoding.UTF8.GetBytes(line + "\n"));
        f.Flush(true);
    }
}
