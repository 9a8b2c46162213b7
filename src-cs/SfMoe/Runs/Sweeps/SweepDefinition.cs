using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using SfMoe.Core;
using SfMoe.Data;

namespace SfMoe.Runs.Sweeps;

/// <summary>
/// What a sweep runs, as DomainBed's <c>sweep.py</c> defines it: datasets x algorithms x test environments x hparams
/// seeds x trial seeds, each combination one training run. Extra training options (<see cref="TrainArgs"/>, in the
/// running application's command-line syntax) go to every job; the sweep itself sets the job's DomainBed keys.
/// </summary>
public sealed record SweepDefinition
{
    /// <summary>Datasets (names as <see cref="TrainOptions.Dataset"/> takes them; known names are canonicalised).</summary>
    public IReadOnlyList<string> Datasets { get; init; } = ["Synthetic"];
    /// <summary>Algorithms (ERM, SFMoE, GMoE).</summary>
    public IReadOnlyList<string> Algorithms { get; init; } = ["SFMoE"];
    /// <summary>The environments to hold out (null: every environment of each dataset).</summary>
    public IReadOnlyList<int>? TestEnvs { get; init; }
    /// <summary>Only single test environments. False (DomainBed's default) also runs every pair {i, j} that contains a
    /// chosen test environment, which leave-one-domain-out selection needs (DomainBed's <c>all_test_env_combinations</c>).</summary>
    public bool SingleTestEnvs { get; init; }
    /// <summary>First hparams seed (DomainBed's <c>n_hparams_from</c>; 0 = the default hyperparameters).</summary>
    public int HparamsFrom { get; init; }
    /// <summary>End of the hparams seeds, exclusive (DomainBed's <c>n_hparams</c>).</summary>
    public int HparamsTo { get; init; } = 20;
    /// <summary>Trial seeds 0..Trials-1 (DomainBed's <c>n_trials</c>).</summary>
    public int Trials { get; init; } = 3;
    /// <summary>Data directory passed to every job (null: none; the jobs then use SFMOE_DATA_DIR if they need one).</summary>
    public string? DataDir { get; init; }
    /// <summary>Extra training options for every job, as command-line words (see <see cref="ParseTrainArgs"/>). The
    /// application checks them; options the sweep sets itself (the job's keys, its folder, threads) are its to refuse.</summary>
    public IReadOnlyList<string> TrainArgs { get; init; } = [];

    /// <summary>The definition as stored in sweep.json.</summary>
    public JsonObject ToJson() => new()
    {
        ["datasets"] = new JsonArray(Datasets.Select(d => (JsonNode)JsonValue.Create(d)!).ToArray()),
        ["algorithms"] = new JsonArray(Algorithms.Select(a => (JsonNode)JsonValue.Create(a)!).ToArray()),
        ["test_envs"] = TestEnvs is null ? null : new JsonArray(TestEnvs.Select(t => (JsonNode)JsonValue.Create(t)).ToArray()),
        ["single_test_envs"] = SingleTestEnvs,
        ["n_hparams_from"] = HparamsFrom,
        ["n_hparams"] = HparamsTo,
        ["n_trials"] = Trials,
        ["data_dir"] = DataDir,
        ["train_args"] = new JsonArray(TrainArgs.Select(a => (JsonNode)JsonValue.Create(a)!).ToArray()),
    };

    /// <summary>Reads <see cref="ToJson"/>'s form.</summary>
    public static SweepDefinition FromJson(JsonObject o)
    {
        static IReadOnlyList<string> Strings(JsonNode? n, string key) =>
            n is JsonArray a ? a.Select(x => x?.GetValue<string>() ?? throw new RunException($"sweep.json: null in definition.{key}")).ToArray()
                             : throw new RunException($"sweep.json: definition.{key} must be a list");
        return new SweepDefinition
        {
            Datasets = Strings(o["datasets"], "datasets"),
            Algorithms = Strings(o["algorithms"], "algorithms"),
            TestEnvs = o["test_envs"] is JsonArray te ? te.Select(x => x!.GetValue<int>()).ToArray() : null,
            SingleTestEnvs = o["single_test_envs"]?.GetValue<bool>() ?? false,
            HparamsFrom = o["n_hparams_from"]?.GetValue<int>() ?? 0,
            HparamsTo = o["n_hparams"]?.GetValue<int>() ?? 20,
            Trials = o["n_trials"]?.GetValue<int>() ?? 3,
            DataDir = o["data_dir"]?.GetValue<string>(),
            TrainArgs = o["train_args"] is null ? [] : Strings(o["train_args"], "train_args"),
        };
    }

    /// <summary>Whether two definitions describe the same jobs (compared as stored).</summary>
    public bool SameAs(SweepDefinition other) => ToJson().ToJsonString() == other.ToJson().ToJsonString();

    /// <summary>
    /// The jobs, in DomainBed's order (trial seed, dataset, algorithm, test environments, hparams seed).
    /// <paramref name="environmentCount"/> gives a dataset's number of environments (default:
    /// <see cref="EnvironmentCount"/>). Throws <see cref="SfMoeException"/> for an invalid definition.
    /// </summary>
    public IReadOnlyList<SweepJob> Expand(Func<string, int>? environmentCount = null)
    {
        environmentCount ??= d => EnvironmentCount(d, DataDir);
        if (Datasets.Count == 0) throw new RunException("a sweep needs at least one dataset");
        if (Algorithms.Count == 0) throw new RunException("a sweep needs at least one algorithm");
        if (Trials < 1) throw new RunException($"the number of trials must be >= 1, got {Trials}");
        if (HparamsFrom < 0 || HparamsTo <= HparamsFrom)
            throw new RunException($"hparams seeds {HparamsFrom}..{HparamsTo - 1} are empty: give n_hparams > n_hparams_from >= 0");
        if (Datasets.Distinct().Count() != Datasets.Count) throw new RunException("a dataset is listed twice");
        if (Algorithms.Distinct().Count() != Algorithms.Count) throw new RunException("an algorithm is listed twice");
        foreach (var a in Algorithms)
            if (Train.AlgorithmKindModule.tryParse(a) is null) throw new RunException($"unknown algorithm {a}: expected ERM, SFMoE or GMoE");
        var extra = ParseTrainArgs(TrainArgs);
        var combos = Datasets.ToDictionary(d => d, d => TestEnvCombinations(d, environmentCount(d)));

        var jobs = new List<SweepJob>();
        for (int trial = 0; trial < Trials; trial++)
            foreach (var dataset in Datasets)
                foreach (var algorithm in Algorithms)
                    foreach (var testEnvs in combos[dataset])
                        for (int hp = HparamsFrom; hp < HparamsTo; hp++)
                            jobs.Add(SweepJob.Create(dataset, Canonical(algorithm), testEnvs, hp, trial, DataDir, extra));
        var dup = jobs.GroupBy(j => j.Id).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new RunException($"two jobs of the sweep have the same arguments: {dup.First().Describe()}");
        return jobs;
    }

    static string Canonical(string algorithm) => Train.AlgorithmKindModule.name(Train.AlgorithmKindModule.tryParse(algorithm)!.Value);

    IReadOnlyList<int[]> TestEnvCombinations(string dataset, int n)
    {
        var chosen = TestEnvs ?? Enumerable.Range(0, n).ToArray();
        foreach (var t in chosen)
            if (t < 0 || t >= n) throw new RunException($"test env {t} is out of range: {dataset} has environments 0..{n - 1}");
        if (chosen.Distinct().Count() != chosen.Count) throw new RunException("a test env is listed twice");
        if (chosen.Count == 0) throw new RunException("give at least one test env");
        if (!SingleTestEnvs && n < 3)
            throw new RunException($"{dataset} has {n} environments: pairs of test envs need at least 3 (use single test envs)");
        if (n < 2) throw new RunException($"{dataset} has {n} environment: nothing is left to train on");
        return TestEnvCombinations(n, chosen, SingleTestEnvs);
    }

    /// <summary>
    /// DomainBed's test-environment combinations over <paramref name="n"/> environments, in its order: for each i,
    /// [i] and then (unless <paramref name="single"/>) every [i, j] with j &gt; i, keeping only combinations that contain
    /// a chosen environment. With every environment chosen this is <c>all_test_env_combinations(n)</c> (or
    /// <c>[[i] for i in range(n)]</c> when single).
    /// </summary>
    public static IReadOnlyList<int[]> TestEnvCombinations(int n, IReadOnlyCollection<int> chosen, bool single)
    {
        var list = new List<int[]>();
        for (int i = 0; i < n; i++)
        {
            if (chosen.Contains(i)) list.Add([i]);
            if (single) continue;
            for (int j = i + 1; j < n; j++)
                if (chosen.Contains(i) || chosen.Contains(j)) list.Add([i, j]);
        }
        return list;
    }

    /// <summary>
    /// The number of environments of a dataset without reading its images: a known dataset's (Synthetic has 4), or
    /// the sub-folders of a custom dataset folder (<c>dataDir/name</c>, or the name as a path).
    /// </summary>
    public static int EnvironmentCount(string dataset, string? dataDir)
    {
        if (SfMoe.Data.Datasets.TryGetSpec(dataset) is { } spec) return spec.Environments.Count;
        var candidates = new List<string>();
        if (dataDir is not null) candidates.Add(Path.Combine(dataDir, dataset));
        else if (Environment.GetEnvironmentVariable(SfMoe.Data.Datasets.DataDirVariable) is { Length: > 0 } env) candidates.Add(Path.Combine(env, dataset));
        candidates.Add(dataset);
        foreach (var c in candidates)
            if (Directory.Exists(c))
                return new DirectoryInfo(c).GetDirectories().Count(d => !d.Name.StartsWith('.'));
        throw new RunException($"unknown dataset {dataset}: not a known dataset ({string.Join(", ", SfMoe.Data.Datasets.Names)}) and no folder {string.Join(" or ", candidates)}");
    }

    /// <summary>The name a job records for a dataset: the canonical name of a known dataset, else as given.</summary>
    public static string DatasetName(string dataset) => SfMoe.Data.Datasets.TryGetSpec(dataset)?.Name ?? dataset;

    static readonly Regex IntegerText = new(@"^-?(0|[1-9][0-9]{0,17})$", RegexOptions.CultureInvariant);
    static readonly Regex OptionName = new(@"^--[a-z][a-z0-9]*(-[a-z0-9]+)*$", RegexOptions.CultureInvariant);

    /// <summary>
    /// Extra training options as (key, value) pairs, by DomainBed's argparse convention (the key is the option's name
    /// with '_' for '-'): "--checkpoint-freq 10" is ("checkpoint_freq", 10L), an option followed by another option or by
    /// nothing is a flag (true). Integer values become numbers, anything else stays a string. Throws
    /// <see cref="SfMoeException"/> for a stray value or a repeated option.
    /// </summary>
    public static IReadOnlyList<KeyValuePair<string, object>> ParseTrainArgs(IReadOnlyList<string> tokens)
    {
        var pairs = new List<KeyValuePair<string, object>>();
        for (int i = 0; i < tokens.Count; i++)
        {
            var t = tokens[i];
            if (!OptionName.IsMatch(t)) throw new RunException($"train option expected, got '{t}' (extra train options look like --name value)");
            var key = t[2..].Replace('-', '_');
            if (pairs.Any(p => p.Key == key)) throw new RunException($"{t} is given twice");
            object value = true;
            if (i + 1 < tokens.Count && !tokens[i + 1].StartsWith("--", StringComparison.Ordinal))
            {
                var v = tokens[++i];
                value = IntegerText.IsMatch(v) ? long.Parse(v, CultureInfo.InvariantCulture) : v;
            }
            pairs.Add(new(key, value));
        }
        return pairs;
    }
}

/// <summary>
/// One job of a sweep: the arguments of one training run. Its <see cref="Id"/> (and folder name) is DomainBed's:
/// the MD5 of <c>json.dumps(train_args, sort_keys=True)</c>, where train_args holds algorithm, data_dir (when given),
/// dataset, hparams_seed, seed, test_envs, trial_seed and the extra train options; <c>seed</c> is DomainBed's
/// <c>seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed)</c>.
/// </summary>
public sealed class SweepJob
{
    SweepJob(SortedDictionary<string, object> args, string dataset, string algorithm, int[] testEnvs, int hp, int trial, int seed)
    {
        TrainArgs = args; Dataset = dataset; Algorithm = algorithm; TestEnvs = testEnvs; HparamsSeed = hp; TrialSeed = trial; Seed = seed;
        Id = Md5Hex(PythonJson.Dumps(args));
    }

    /// <summary>The job's arguments, keys sorted (ordinal): string, long, bool or int[] (test_envs) values.</summary>
    public IReadOnlyDictionary<string, object> TrainArgs { get; }
    /// <summary>32 lowercase hex digits: the job's folder under the sweep's directory.</summary>
    public string Id { get; }
    /// <summary>Dataset name.</summary>
    public string Dataset { get; }
    /// <summary>Algorithm name.</summary>
    public string Algorithm { get; }
    /// <summary>Held-out environments.</summary>
    public IReadOnlyList<int> TestEnvs { get; }
    /// <summary>Hparams seed.</summary>
    public int HparamsSeed { get; }
    /// <summary>Trial seed.</summary>
    public int TrialSeed { get; }
    /// <summary>The run's seed: seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed).</summary>
    public int Seed { get; }
    /// <summary>The <c>steps</c> extra option when given (else the dataset's default applies).</summary>
    public long? Steps => TrainArgs.TryGetValue("steps", out var s) && s is long l ? l : null;

    /// <summary>Builds a job (extra options as <see cref="SweepDefinition.ParseTrainArgs"/> returns them).</summary>
    public static SweepJob Create(string dataset, string algorithm, IReadOnlyList<int> testEnvs, int hparamsSeed, int trialSeed,
        string? dataDir, IEnumerable<KeyValuePair<string, object>> extra)
    {
        dataset = SweepDefinition.DatasetName(dataset);
        var te = testEnvs.ToArray();
        int seed = Splits.SeedHash(dataset, algorithm, te, hparamsSeed, trialSeed);
        var args = new SortedDictionary<string, object>(StringComparer.Ordinal)
        {
            ["algorithm"] = algorithm,
            ["dataset"] = dataset,
            ["hparams_seed"] = (long)hparamsSeed,
            ["seed"] = (long)seed,
            ["test_envs"] = te,
            ["trial_seed"] = (long)trialSeed,
        };
        if (dataDir is not null) args["data_dir"] = dataDir;
        foreach (var (k, v) in extra)
        {
            if (args.ContainsKey(k)) throw new RunException($"extra train option {k} is set by the sweep for each job");
            args[k] = v;
        }
        return new SweepJob(args, dataset, algorithm, te, hparamsSeed, trialSeed, seed);
    }

    /// <summary>"Synthetic SFMoE test_envs=[0] hparams_seed=0 trial_seed=1".</summary>
    public string Describe() =>
        $"{Dataset} {Algorithm} test_envs=[{string.Join(", ", TestEnvs)}] hparams_seed={HparamsSeed} trial_seed={TrialSeed}";

    /// <summary>The arguments as a JSON object (sweep.json).</summary>
    public JsonObject ArgsJson()
    {
        var o = new JsonObject();
        foreach (var (k, v) in TrainArgs)
            o[k] = v switch
            {
                int[] a => new JsonArray(a.Select(x => (JsonNode)JsonValue.Create(x)).ToArray()),
                long l => JsonValue.Create(l),
                bool b => JsonValue.Create(b),
                _ => JsonValue.Create(Convert.ToString(v, CultureInfo.InvariantCulture)),
            };
        return o;
    }

    static string Md5Hex(string text) => Convert.ToHexStringLower(MD5.HashData(Encoding.UTF8.GetBytes(text)));
}

/// <summary>Python's <c>json.dumps(obj, sort_keys=True)</c> with its default separators and ensure_ascii, for the
/// value types a job's arguments hold.</summary>
internal static class PythonJson
{
    /// <summary>Serialises a dictionary (keys sorted ordinal, as Python sorts str), string, integer, bool, null, int[] or
    /// list; ", " and ": " separators; non-ASCII characters as \uXXXX escapes (UTF-16 units, as Python).</summary>
    public static string Dumps(object? value)
    {
        var sb = new StringBuilder();
        Write(sb, value);
        return sb.ToString();
    }

    static void Write(StringBuilder sb, object? v)
    {
        switch (v)
        {
            case null: sb.Append("null"); break;
            case bool b: sb.Append(b ? "true" : "false"); break;
            case string s: WriteString(sb, s); break;
            case int or long or short or byte or uint or ulong or sbyte or ushort:
                sb.Append(Convert.ToString(v, CultureInfo.InvariantCulture)); break;
            case double d: sb.Append(PyNum.Repr(d)); break;
            case System.Collections.IDictionary dict:
                var keys = dict.Keys.Cast<object>().Select(k => (string)k).OrderBy(k => k, StringComparer.Ordinal).ToList();
                sb.Append('{');
                for (int i = 0; i < keys.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    WriteString(sb, keys[i]);
                    sb.Append(": ");
                    Write(sb, dict[keys[i]]);
                }
                sb.Append('}');
                break;
            case System.Collections.IEnumerable list:
                sb.Append('[');
                bool first = true;
                foreach (var x in list)
                {
                    if (!first) sb.Append(", ");
                    Write(sb, x);
                    first = false;
                }
                sb.Append(']');
                break;
            default: throw new ArgumentException($"no JSON form for {v.GetType().Name}");
        }
    }

    static void WriteString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || c > 0x7e) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
