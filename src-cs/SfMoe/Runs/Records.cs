using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace SfMoe.Runs;

/// <summary>How bad a problem met while reading results.jsonl files is.</summary>
public enum ProblemSeverity
{
    /// <summary>Something was skipped but the data is otherwise usable (a truncated last line, a blank line).</summary>
    Warning,
    /// <summary>A line or file could not be used (malformed JSON, a missing key, an unreadable file).</summary>
    Error,
}

/// <summary>A problem in one line (1-based; 0 for the whole file) of a results file.</summary>
/// <param name="Severity">Warning or error.</param>
/// <param name="File">Path of the file, relative to the input directory when read by <see cref="Records.Load"/>.</param>
/// <param name="Line">1-based line number, 0 when the problem concerns the whole file.</param>
/// <param name="Message">What is wrong and what was done about it.</param>
public sealed record RecordProblem(ProblemSeverity Severity, string File, int Line, string Message)
{
    /// <summary>"warning: dir/results.jsonl:7: message".</summary>
    public override string ToString() =>
        $"{(Severity == ProblemSeverity.Warning ? "warning" : "error")}: {File}{(Line > 0 ? ":" + Line.ToString(CultureInfo.InvariantCulture) : "")}: {Message}";
}

/// <summary>A record line that does not have DomainBed's schema.</summary>
internal sealed class RecordFormatException(string message) : FormatException(message);

/// <summary>
/// One training run: one results.jsonl file (DomainBed writes one per output directory) and whether the run finished
/// (its directory holds a <c>done</c> file). Runs without one are incomplete: killed, failed or still running.
/// </summary>
public sealed class RunInfo
{
    internal RunInfo(string directory, string relativeDirectory, bool done)
    {
        Directory = directory;
        RelativeDirectory = relativeDirectory;
        Done = done;
    }

    /// <summary>Full path of the run's directory.</summary>
    public string Directory { get; }
    /// <summary>The directory relative to the input directory, with '/' separators ("." for the input directory itself).</summary>
    public string RelativeDirectory { get; }
    /// <summary>Full path of the run's results.jsonl.</summary>
    public string ResultsPath => Path.Combine(Directory, Records.ResultsFileName);
    /// <summary>Whether the run's directory holds a <c>done</c> file (written by train.py after the last step).</summary>
    public bool Done { get; }
    /// <summary>Number of valid records read from the file.</summary>
    public int RecordCount { get; internal set; }
    /// <summary>The largest step among the valid records, null when there are none.</summary>
    public long? LastStep { get; internal set; }
    /// <summary>Whether the last line was cut short (no newline and not valid JSON) and skipped: the run was killed while writing.</summary>
    public bool TruncatedLastLine { get; internal set; }
    /// <summary>The first valid record (its args identify the run), null when there are none.</summary>
    public RunRecord? First { get; internal set; }

    /// <summary>"PACS ERM test_envs=[0] trial_seed=0 hparams_seed=1", or "(no valid records)".</summary>
    public string Identity => First is { } r
        ? $"{r.Dataset} {r.Algorithm} test_envs=[{string.Join(", ", r.TestEnvs)}] trial_seed={r.TrialSeed} hparams_seed={r.HparamsSeed}"
        : "(no valid records)";

    /// <summary>The run's directory, identity, records, last step and truncation in one line.</summary>
    public override string ToString() =>
        $"{RelativeDirectory}: {Identity}, {RecordCount} record{(RecordCount == 1 ? "" : "s")}" +
        (LastStep is { } s ? $", last step {s}" : "") + (TruncatedLastLine ? ", last line truncated" : "") +
        (Done ? "" : ", no done file");

    internal static RunInfo InMemory { get; } = new("<memory>", "<memory>", true);
}

/// <summary>
/// One line of a results.jsonl file: DomainBed's record of one evaluation (train.py writes
/// <c>{"args": {...}, "hparams": {...}, "step", "epoch", "loss", ..., "env0_in_acc", "env0_out_acc", ...}</c>).
/// Keys that are not needed for model selection (e.g. "routing") are ignored.
/// </summary>
public sealed class RunRecord
{
    static readonly Regex AccKey = new(@"^env(\d+)_(in|out)_acc$", RegexOptions.CultureInvariant);

    readonly Dictionary<string, double> metrics;

    RunRecord(string dataset, string algorithm, int[] testEnvs, int hparamsSeed, int trialSeed, long step,
        Dictionary<string, double> metrics, IReadOnlyDictionary<string, object?> args, IReadOnlyDictionary<string, object?> hparams,
        RunInfo run, int line)
    {
        Dataset = dataset; Algorithm = algorithm; TestEnvs = testEnvs; HparamsSeed = hparamsSeed; TrialSeed = trialSeed;
        Step = step; this.metrics = metrics; Args = args; Hparams = hparams; Run = run; Line = line;
        int n = 0;
        while (metrics.ContainsKey(OutKey(n))) n++;
        EnvCount = n;
    }

    /// <summary>args.dataset.</summary>
    public string Dataset { get; }
    /// <summary>args.algorithm.</summary>
    public string Algorithm { get; }
    /// <summary>args.test_envs, in the record's order.</summary>
    public IReadOnlyList<int> TestEnvs { get; }
    /// <summary>args.hparams_seed.</summary>
    public int HparamsSeed { get; }
    /// <summary>args.trial_seed.</summary>
    public int TrialSeed { get; }
    /// <summary>step.</summary>
    public long Step { get; }
    /// <summary>DomainBed's environment count: env0_out_acc, env1_out_acc, ... up to the first one missing.</summary>
    public int EnvCount { get; }
    /// <summary>The args object as parsed (dictionaries, lists, strings, long, double, bool, null).</summary>
    public IReadOnlyDictionary<string, object?> Args { get; }
    /// <summary>The hparams object as parsed (empty when absent).</summary>
    public IReadOnlyDictionary<string, object?> Hparams { get; }
    /// <summary>Every top-level number of the record (step, epoch, loss, aux_loss, step_time, mem_gb, envN_in_acc, ...).</summary>
    public IReadOnlyDictionary<string, double> Metrics => metrics;
    /// <summary>The run (results file) the record came from.</summary>
    public RunInfo Run { get; }
    /// <summary>1-based line number in the run's results file (0 for records parsed from a string).</summary>
    public int Line { get; }

    static string InKey(int env) => $"env{env}_in_acc";
    static string OutKey(int env) => $"env{env}_out_acc";

    /// <summary>envN_in_acc (the 80 % split); throws <see cref="KeyNotFoundException"/> naming the record when absent.</summary>
    public double InAcc(int env) => Acc(InKey(env));
    /// <summary>envN_out_acc (the 20 % held-out split); throws <see cref="KeyNotFoundException"/> naming the record when absent.</summary>
    public double OutAcc(int env) => Acc(OutKey(env));

    double Acc(string key) => metrics.TryGetValue(key, out var v)
        ? v
        : throw new KeyNotFoundException($"{Where}: record has no \"{key}\"");

    /// <summary>Whether the record has envN_in_acc.</summary>
    public bool HasInAcc(int env) => metrics.ContainsKey(InKey(env));

    /// <summary>"dir/results.jsonl:7", for messages.</summary>
    public string Where => Line > 0 ? $"{Run.RelativeDirectory}/{Records.ResultsFileName}:{Line}" : Run.RelativeDirectory;

    /// <summary>
    /// Parses one results.jsonl line. Requires args.dataset and args.algorithm (strings), args.test_envs (integers
    /// &gt;= 0), args.trial_seed and args.hparams_seed (integers), step (an integer), every envN_in_acc / envN_out_acc a
    /// number (NaN allowed) and both accuracies of every test environment. Throws <see cref="FormatException"/>
    /// (<see cref="RecordFormatException"/> for schema errors) otherwise.
    /// </summary>
    public static RunRecord Parse(string jsonLine) => Parse(jsonLine, RunInfo.InMemory, 0);

    internal static RunRecord Parse(string jsonLine, RunInfo run, int line)
    {
        object? root;
        try { root = PyJson.Parse(jsonLine); }
        catch (PyJsonException e) { throw new FormatException("malformed JSON: " + e.Message, e); }
        if (root is not Dictionary<string, object?> rec) throw new RecordFormatException("the line is not a JSON object");
        if (!rec.TryGetValue("args", out var argsObj) || argsObj is not Dictionary<string, object?> args)
            throw new RecordFormatException("missing or invalid \"args\" (an object)");
        var hparams = rec.TryGetValue("hparams", out var h) && h is Dictionary<string, object?> hd
            ? hd : new Dictionary<string, object?>();
        string dataset = StringArg(args, "dataset");
        string algorithm = StringArg(args, "algorithm");
        if (!args.TryGetValue("test_envs", out var te) || te is not List<object?> teList)
            throw new RecordFormatException("missing or invalid \"args.test_envs\" (a list of integers)");
        var testEnvs = new int[teList.Count];
        for (int k = 0; k < teList.Count; k++)
        {
            if (AsInteger(teList[k]) is not { } v || v < 0 || v > int.MaxValue)
                throw new RecordFormatException($"invalid \"args.test_envs\": element {k} is not an integer >= 0");
            testEnvs[k] = (int)v;
        }
        int trialSeed = IntArg(args, "trial_seed", "args.");
        int hparamsSeed = IntArg(args, "hparams_seed", "args.");
        if (!rec.TryGetValue("step", out var stepObj) || AsInteger(stepObj) is not { } step)
            throw new RecordFormatException("missing or invalid \"step\" (an integer)");

        var metrics = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var (key, value) in rec)
        {
            double? d = value switch { long l => l, double x => x, _ => null };
            if (d is { } num) metrics[key] = num;
            else if (AccKey.IsMatch(key))
                throw new RecordFormatException($"\"{key}\" is not a number");
        }
        foreach (int t in testEnvs)
            foreach (var key in new[] { InKey(t), OutKey(t) })
                if (!metrics.ContainsKey(key))
                    throw new RecordFormatException($"test environment {t} has no \"{key}\"");
        return new RunRecord(dataset, algorithm, testEnvs, hparamsSeed, trialSeed, step, metrics, args, hparams, run, line);
    }

    static string StringArg(Dictionary<string, object?> args, string key) =>
        args.TryGetValue(key, out var v) && v is string s
            ? s
            : throw new RecordFormatException($"missing or invalid \"args.{key}\" (a string)");

    static int IntArg(Dictionary<string, object?> obj, string key, string prefix) =>
        obj.TryGetValue(key, out var v) && AsInteger(v) is { } i && i >= int.MinValue && i <= int.MaxValue
            ? (int)i
            : throw new RecordFormatException($"missing or invalid \"{prefix}{key}\" (an integer)");

    /// <summary>A JSON integer, or a float with an integral value (Python compares 3.0 == 3).</summary>
    static long? AsInteger(object? v) => v switch
    {
        long l => l,
        double d when Math.Floor(d) == d && Math.Abs(d) < 9.2e18 => (long)d,
        _ => null,
    };
}

/// <summary>Records read from a sweep, the runs they came from and what went wrong while reading.</summary>
public sealed class RecordSet
{
    /// <summary>Wraps records already in memory; the runs are those the records name, in first-appearance order.</summary>
    public RecordSet(IEnumerable<RunRecord> records, IEnumerable<RecordProblem>? problems = null, string? inputDirectory = null)
    {
        Records = records.ToArray();
        Runs = Records.Select(r => r.Run).Distinct().ToArray();
        Problems = problems?.ToArray() ?? [];
        InputDirectory = inputDirectory;
    }

    internal RecordSet(RunRecord[] records, RunInfo[] runs, RecordProblem[] problems, string inputDirectory)
    {
        Records = records; Runs = runs; Problems = problems; InputDirectory = inputDirectory;
    }

    /// <summary>The directory the records were read from (null for records built in memory).</summary>
    public string? InputDirectory { get; }
    /// <summary>Valid records in reading order: files in directory order (ordinal, depth first), lines in file order.</summary>
    public IReadOnlyList<RunRecord> Records { get; }
    /// <summary>Every results file found, complete or not, with or without valid records, in reading order.</summary>
    public IReadOnlyList<RunInfo> Runs { get; }
    /// <summary>Runs whose directory has no <c>done</c> file. Their records are used, as DomainBed does.</summary>
    public IReadOnlyList<RunInfo> IncompleteRuns => Runs.Where(r => !r.Done).ToArray();
    /// <summary>Skipped lines and unreadable files.</summary>
    public IReadOnlyList<RecordProblem> Problems { get; }
    /// <summary>Whether any problem is an error (a malformed line or an unreadable file).</summary>
    public bool HasErrors => Problems.Any(p => p.Severity == ProblemSeverity.Error);

    /// <summary>The same set without the records of incomplete runs (they stay listed in <see cref="Runs"/>).</summary>
    public RecordSet CompleteRunsOnly() =>
        new(Records.Where(r => r.Run.Done).ToArray(), Runs.ToArray(), Problems.ToArray(), InputDirectory ?? "");
}

/// <summary>Reads DomainBed results: every results.jsonl under a directory.</summary>
public static class Records
{
    /// <summary>"results.jsonl".</summary>
    public const string ResultsFileName = "results.jsonl";
    /// <summary>"done": train.py writes it after the last step.</summary>
    public const string DoneFileName = "done";

    /// <summary>
    /// Reads every results.jsonl in <paramref name="inputDirectory"/> and below it: DomainBed's layout
    /// <c>DIR/*/results.jsonl</c>, a file directly in DIR, and deeper nesting. Directories are visited depth first,
    /// the directory's own file before its subdirectories, names in ordinal order (DomainBed uses os.listdir's
    /// arbitrary order). A last line without a newline that is not valid JSON (a killed run) is skipped with a
    /// warning; any other bad line is skipped with an error; neither stops the reading. Throws
    /// <see cref="DirectoryNotFoundException"/> when the directory does not exist.
    /// </summary>
    public static RecordSet Load(string inputDirectory)
    {
        var root = new DirectoryInfo(inputDirectory);
        if (!root.Exists) throw new DirectoryNotFoundException($"input directory not found: {inputDirectory}");
        var records = new List<RunRecord>();
        var runs = new List<RunInfo>();
        var problems = new List<RecordProblem>();
        var visited = new HashSet<string>(StringComparer.Ordinal);
        Walk(root, root.FullName, 0, visited, records, runs, problems);
        return new RecordSet(records.ToArray(), runs.ToArray(), problems.ToArray(), root.FullName);
    }

    static void Walk(DirectoryInfo dir, string rootPath, int depth, HashSet<string> visited,
        List<RunRecord> records, List<RunInfo> runs, List<RecordProblem> problems)
    {
        string real;
        try { real = dir.LinkTarget is null ? dir.FullName : (dir.ResolveLinkTarget(true)?.FullName ?? dir.FullName); }
        catch (IOException) { real = dir.FullName; }
        if (!visited.Add(real) || depth > 64) return;   // symbolic-link cycles

        string rel = Path.GetRelativePath(rootPath, dir.FullName).Replace(Path.DirectorySeparatorChar, '/');
        var results = new FileInfo(Path.Combine(dir.FullName, ResultsFileName));
        if (results.Exists)
        {
            var run = new RunInfo(dir.FullName, rel, File.Exists(Path.Combine(dir.FullName, DoneFileName)));
            runs.Add(run);
            ReadFile(results.FullName, rel == "." ? ResultsFileName : rel + "/" + ResultsFileName, run, records, problems);
        }
        DirectoryInfo[] subdirs;
        try { subdirs = dir.GetDirectories(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            problems.Add(new(ProblemSeverity.Error, rel, 0, $"cannot list the directory: {e.Message}"));
            return;
        }
        Array.Sort(subdirs, (a, b) => string.CompareOrdinal(a.Name, b.Name));
        foreach (var sub in subdirs) Walk(sub, rootPath, depth + 1, visited, records, runs, problems);
    }

    static void ReadFile(string path, string shownPath, RunInfo run, List<RunRecord> records, List<RecordProblem> problems)
    {
        string text;
        try { text = File.ReadAllText(path, new UTF8Encoding(false, true)); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or DecoderFallbackException)
        {
            problems.Add(new(ProblemSeverity.Error, shownPath, 0, $"cannot read the file: {e.Message}"));
            return;
        }
        if (text.Length > 0 && text[0] == '\uFEFF') text = text[1..];
        var lines = text.Split('\n');
        bool endsWithNewline = text.EndsWith('\n');
        // Split leaves an empty last element after a final newline: it is not a line.
        int count = endsWithNewline ? lines.Length - 1 : lines.Length;
        if (text.Length == 0) count = 0;
        int before = records.Count;
        for (int k = 0; k < count; k++)
        {
            string line = lines[k].EndsWith('\r') ? lines[k][..^1] : lines[k];
            int lineNo = k + 1;
            bool unterminatedLast = k == count - 1 && !endsWithNewline;
            if (string.IsNullOrWhiteSpace(line))
            {
                problems.Add(new(ProblemSeverity.Warning, shownPath, lineNo, "blank line skipped"));
                continue;
            }
            try
            {
                var rec = RunRecord.Parse(line, run, lineNo);
                records.Add(rec);
            }
            catch (FormatException e) when (unterminatedLast && e is not RecordFormatException)
            {
                run.TruncatedLastLine = true;
                problems.Add(new(ProblemSeverity.Warning, shownPath, lineNo,
                    $"truncated last line skipped (no newline, {e.Message}); the run was probably killed while writing"));
            }
            catch (FormatException e)
            {
                problems.Add(new(ProblemSeverity.Error, shownPath, lineNo, $"line skipped: {e.Message}"));
            }
        }
        run.RecordCount = records.Count - before;
        if (run.RecordCount > 0)
        {
            run.First = records[before];
            run.LastStep = records.Skip(before).Max(r => r.Step);
        }
        else if (count == 0)
            problems.Add(new(ProblemSeverity.Warning, shownPath, 0, "no records (empty file)"));
    }
}

/// <summary>
/// The parts of DomainBed's query library (domainbed/lib/query.py, Q) that model selection needs, with Python's
/// semantics: groups ordered by sorted key with members in input order, max returning the first maximum, a stable
/// sort that puts NaN first.
/// </summary>
internal static class Query
{
    /// <summary>
    /// Q.group: groups ordered by key (ascending; strings ordinal, as Python sorts them), each group's items in input
    /// order.
    /// </summary>
    public static IReadOnlyList<KeyValuePair<TKey, IReadOnlyList<T>>> Group<T, TKey>(this IEnumerable<T> items, Func<T, TKey> key)
        where TKey : notnull
    {
        var groups = new Dictionary<TKey, List<T>>();
        foreach (var x in items)
        {
            var k = key(x);
            if (!groups.TryGetValue(k, out var list)) groups[k] = list = [];
            list.Add(x);
        }
        var comparer = typeof(TKey) == typeof(string) ? (IComparer<TKey>)StringComparer.Ordinal : Comparer<TKey>.Default;
        return groups.OrderBy(g => g.Key, comparer)
            .Select(g => new KeyValuePair<TKey, IReadOnlyList<T>>(g.Key, g.Value)).ToArray();
    }

    /// <summary>
    /// Q.argmax / Python's max(items, key=...): the first item whose key is largest. A later item replaces the current
    /// one only when its key is strictly greater, so ties go to the earliest item and NaN keys never win unless first.
    /// Throws <see cref="InvalidOperationException"/> on an empty sequence (Python raises ValueError).
    /// </summary>
    public static T ArgMax<T>(this IEnumerable<T> items, Func<T, double> key)
    {
        using var e = items.GetEnumerator();
        if (!e.MoveNext()) throw new InvalidOperationException("ArgMax of an empty sequence");
        T best = e.Current;
        double bestKey = key(best);
        while (e.MoveNext())
        {
            double k = key(e.Current);
            if (k > bestKey) { best = e.Current; bestKey = k; }
        }
        return best;
    }

    /// <summary>Q.sorted: a stable ascending sort in which a NaN key counts as -infinity.</summary>
    public static IReadOnlyList<T> Sorted<T>(this IEnumerable<T> items, Func<T, double> key) =>
        items.Select((x, i) => (x, k: double.IsNaN(key(x)) ? double.NegativeInfinity : key(x), i))
            .OrderBy(t => t.k).ThenBy(t => t.i).Select(t => t.x).ToArray();
}
