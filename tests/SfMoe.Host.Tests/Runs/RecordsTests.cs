using SfMoe.Runs;
using static SfMoe.Host.Tests.Runs.SweepBuilder;

namespace SfMoe.Host.Tests.Runs;

/// <summary>Reading results.jsonl files: layouts, damaged files, incomplete runs; the query helpers.</summary>
public class RecordsTests
{
    static readonly double[] Acc2 = [0.5, 0.75];

    static string Line(int testEnv, long step, int trial = 0, int hp = 0) =>
        Rec("Toy", "ERM", [testEnv], trial, hp, step, Acc2, Acc2);

    [Fact]
    public void ReadsEveryLayoutInOrdinalDepthFirstOrder()
    {
        using var tmp = new TempDir();
        WriteRun(tmp.Path, ".", [Line(0, 0)]);                 // results.jsonl directly in the input dir
        WriteRun(tmp.Path, "b", [Line(1, 0)]);                 // DomainBed's DIR/*/results.jsonl
        WriteRun(tmp.Path, "a", [Line(0, 100), Line(0, 200)]);
        WriteRun(tmp.Path, "a/x/deeper", [Line(1, 300)]);      // nested: a sweep of sweeps
        WriteRun(tmp.Path, "B", [Line(1, 400)]);               // ordinal: "B" < "a" < "b"
        Directory.CreateDirectory(Path.Combine(tmp.Path, "empty-dir"));

        var set = Records.Load(tmp.Path);
        Assert.Equal([".", "B", "a", "a/x/deeper", "b"], set.Runs.Select(r => r.RelativeDirectory));
        Assert.Equal([0L, 400, 100, 200, 300, 0], set.Records.Select(r => r.Step));
        Assert.Equal([1, 1, 1, 2, 1, 1], set.Records.Select(r => r.Line));
        Assert.Empty(set.Problems);
        Assert.Empty(set.IncompleteRuns);
        Assert.All(set.Runs, r => Assert.True(r.Done));
        Assert.Equal(2, set.Runs[2].RecordCount);
        Assert.Equal(200L, set.Runs[2].LastStep);
    }

    [Fact]
    public void ParsesDomainBedsSchemaAndIgnoresExtraKeys()
    {
        var r = RunRecord.Parse(Rec("PACS", "SFMoE", [2], 1, 3, 300, [0.5, 0.625, 0.75, 0.875], [0.25, 0.375, 0.5, 0.625],
            extra: "\"routing\": {\"blocks\": [5, 11], \"load\": [[0.25, 0.75]]}, \"env0_uda_acc\": 0.1", loss: double.NaN));
        Assert.Equal(("PACS", "SFMoE", 1, 3, 300L), (r.Dataset, r.Algorithm, r.TrialSeed, r.HparamsSeed, r.Step));
        Assert.Equal([2], r.TestEnvs);
        Assert.Equal(4, r.EnvCount);
        Assert.Equal(0.75, r.InAcc(2));
        Assert.Equal(0.625, r.OutAcc(3));
        Assert.True(double.IsNaN(r.Metrics["loss"]));          // json.dumps writes a diverged loss as NaN
        Assert.Equal("domain_generalization", r.Args["task"]);
        Assert.Equal(32L, r.Hparams["batch_size"]);
        Assert.False(r.Metrics.ContainsKey("routing"));
        var missing = Assert.Throws<KeyNotFoundException>(() => r.InAcc(7));
        Assert.Contains("env7_in_acc", missing.Message);
    }

    [Theory]
    [InlineData("{\"step\": 0}", "missing or invalid \"args\" (an object)")]
    [InlineData("{\"args\": {\"dataset\": \"D\", \"algorithm\": \"A\", \"test_envs\": [0], \"trial_seed\": 0}, \"step\": 0}",
        "missing or invalid \"args.hparams_seed\" (an integer)")]
    [InlineData("{\"args\": {\"dataset\": \"D\", \"algorithm\": \"A\", \"test_envs\": [-1], \"trial_seed\": 0, \"hparams_seed\": 0}, \"step\": 0}",
        "invalid \"args.test_envs\": element 0 is not an integer >= 0")]
    [InlineData("{\"args\": {\"dataset\": \"D\", \"algorithm\": \"A\", \"test_envs\": [0], \"trial_seed\": 0, \"hparams_seed\": 0}, \"step\": 1.5}",
        "missing or invalid \"step\" (an integer)")]
    [InlineData("{\"args\": {\"dataset\": \"D\", \"algorithm\": \"A\", \"test_envs\": [1], \"trial_seed\": 0, \"hparams_seed\": 0}, \"step\": 0, \"env1_in_acc\": 0.5}",
        "test environment 1 has no \"env1_out_acc\"")]
    [InlineData("{\"args\": {\"dataset\": \"D\", \"algorithm\": \"A\", \"test_envs\": [0], \"trial_seed\": 0, \"hparams_seed\": 0}, \"step\": 0, \"env0_in_acc\": \"0.5\", \"env0_out_acc\": 0.5}",
        "\"env0_in_acc\" is not a number")]
    public void SchemaErrorsSayWhichKey(string line, string message) =>
        Assert.Equal(message, Assert.Throws<RecordFormatException>(() => RunRecord.Parse(line)).Message);

    [Fact]
    public void SkipsATruncatedLastLineWithAWarningAndListsTheRunAsIncomplete()
    {
        using var tmp = new TempDir();
        string partial = Line(0, 200)[..90];                    // killed while writing: no newline, half a record
        WriteRun(tmp.Path, "killed", [Line(0, 0), Line(0, 100)], done: false, tail: partial);
        WriteRun(tmp.Path, "ok", [Line(1, 0)]);

        var set = Records.Load(tmp.Path);
        Assert.Equal(3, set.Records.Count);
        var p = Assert.Single(set.Problems);
        Assert.Equal(ProblemSeverity.Warning, p.Severity);
        Assert.Equal(("killed/results.jsonl", 3), (p.File, p.Line));
        Assert.StartsWith("warning: killed/results.jsonl:3: truncated last line skipped", p.ToString());
        Assert.False(set.HasErrors);
        var run = Assert.Single(set.IncompleteRuns);
        Assert.Equal("killed", run.RelativeDirectory);
        Assert.True(run.TruncatedLastLine);
        Assert.Equal((2, 100L), (run.RecordCount, run.LastStep));
        Assert.Equal("killed: Toy ERM test_envs=[0] trial_seed=0 hparams_seed=0, 2 records, last step 100, last line truncated, no done file",
            run.ToString());
        // Its records are used, as DomainBed uses them; CompleteRunsOnly drops them but keeps the run listed.
        var complete = set.CompleteRunsOnly();
        Assert.Single(complete.Records);
        Assert.Single(complete.IncompleteRuns);
    }

    [Fact]
    public void ReportsMalformedLinesWithFileAndLineAndKeepsTheRest()
    {
        using var tmp = new TempDir();
        var noTrial = Line(0, 200).Replace("\"trial_seed\": 0", "\"trial\": 0");
        WriteRun(tmp.Path, "run", [Line(0, 0), "{\"args\": {oops", noTrial, "", Line(0, 300)]);
        // A complete last line without its newline is a record, not a truncation.
        WriteRun(tmp.Path, "run2", [], tail: Line(1, 0));
        // CRLF line ends are accepted.
        Directory.CreateDirectory(Path.Combine(tmp.Path, "run3"));
        File.WriteAllText(Path.Combine(tmp.Path, "run3", "results.jsonl"), Line(1, 100) + "\r\n" + Line(1, 200) + "\r\n");

        var set = Records.Load(tmp.Path);
        Assert.Equal([0L, 300, 0, 100, 200], set.Records.Select(r => r.Step));
        Assert.Equal(
        [
            "error: run/results.jsonl:2: line skipped: malformed JSON: expected a property name in double quotes at column 11",
            "error: run/results.jsonl:3: line skipped: missing or invalid \"args.trial_seed\" (an integer)",
            "warning: run/results.jsonl:4: blank line skipped",
        ], set.Problems.Select(p => p.ToString()));
        Assert.True(set.HasErrors);
        Assert.Equal(["run3"], set.IncompleteRuns.Select(r => r.RelativeDirectory));
    }

    [Fact]
    public void AnEmptyResultsFileIsARunWithNoRecords()
    {
        using var tmp = new TempDir();
        WriteRun(tmp.Path, "just-started", [], done: false);
        var set = Records.Load(tmp.Path);
        Assert.Empty(set.Records);
        var run = Assert.Single(set.IncompleteRuns);
        Assert.Equal("just-started: (no valid records), 0 records, no done file", run.ToString());
        Assert.Equal("warning: just-started/results.jsonl: no records (empty file)", Assert.Single(set.Problems).ToString());
    }

    [Fact]
    public void AMissingInputDirectoryThrows() =>
        Assert.Throws<DirectoryNotFoundException>(() => Records.Load("/nonexistent/sfmoe/sweep"));

    [Fact]
    public void GroupSortsKeysAndKeepsInputOrderWithinAGroup()
    {
        var groups = new[] { (3, "a"), (1, "b"), (3, "c"), (2, "d"), (1, "e") }.Group(x => x.Item1);
        Assert.Equal([1, 2, 3], groups.Select(g => g.Key));
        Assert.Equal(["b", "e"], groups[0].Value.Select(x => x.Item2));
        Assert.Equal(["a", "c"], groups[2].Value.Select(x => x.Item2));
        // Strings sort by code point, as Python's sorted: "B" < "a".
        Assert.Equal(["B", "a", "b"], new[] { "b", "a", "B" }.Group(s => s).Select(g => g.Key));
    }

    [Fact]
    public void ArgMaxReturnsTheFirstMaximumAsPythonsMax()
    {
        var items = new[] { ("x", 0.5), ("y", 0.75), ("z", 0.75), ("w", 0.25) };
        Assert.Equal("y", items.ArgMax(t => t.Item2).Item1);
        // Python's max only replaces on '>': a NaN first stays, a NaN later never wins.
        Assert.Equal("n", new[] { ("n", double.NaN), ("a", 1.0) }.ArgMax(t => t.Item2).Item1);
        Assert.Equal("a", new[] { ("a", 1.0), ("n", double.NaN) }.ArgMax(t => t.Item2).Item1);
        Assert.Throws<InvalidOperationException>(() => Array.Empty<double>().ArgMax(x => x));
    }

    [Fact]
    public void SortedIsStableWithNaNAsMinusInfinity()
    {
        var items = new[] { ("a", 0.5), ("b", double.NaN), ("c", 0.5), ("d", double.NegativeInfinity), ("e", 0.25) };
        Assert.Equal(["b", "d", "e", "a", "c"], items.Sorted(t => t.Item2).Select(t => t.Item1));
    }
}
