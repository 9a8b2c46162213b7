using System.Text.Json;
using SfMoe.Runs;
using static SfMoe.Host.Tests.Runs.SweepBuilder;

namespace SfMoe.Host.Tests.Runs;

/// <summary>collect_results.py's tables: numbers, every output format, and the cross-check against DomainBed's code.</summary>
public class CollectTests
{
    static IReadOnlyList<string>? Names(string dataset) => dataset switch
    {
        "Two" => ["A", "B"],
        "Toy" => ["E0", "E1", "E2"],
        _ => null,
    };

    /// <summary>
    /// Dataset "Two" (envs A, B), one record per run (so every method reports it), hparams seed 0 only:
    /// ERM: A = .5, .625, .75 (trials 0-2); B = .75, .75, .875. SFMoE: A = .75, .875 (trials 0, 1); B missing.
    /// </summary>
    static RecordSet SmallSweep(TempDir tmp)
    {
        void One(string alg, int env, int trial, double acc)
        {
            var inAcc = new[] { 0.5, 0.5 }; inAcc[env] = acc;
            WriteRun(tmp.Path, $"{alg}-te{env}-trial{trial}", [Rec("Two", alg, [env], trial, 0, 300, inAcc, [0.5, 0.5])]);
        }
        One("ERM", 0, 0, .5); One("ERM", 0, 1, .625); One("ERM", 0, 2, .75);
        One("ERM", 1, 0, .75); One("ERM", 1, 1, .75); One("ERM", 1, 2, .875);
        One("SFMoE", 0, 0, .75); One("SFMoE", 0, 1, .875);
        return Records.Load(tmp.Path);
    }

    [Fact]
    public void SmallSweepNumbers()
    {
        using var tmp = new TempDir();
        var t = Collect.Tables(SmallSweep(tmp), SelectionMethod.Oracle, Names);
        var two = Assert.Single(t.Datasets);
        Assert.Equal(["A", "B"], two.Columns);
        Assert.Equal(["ERM", "SFMoE"], two.Rows.Select(r => r.Algorithm));
        var erm = two.Rows[0];
        // ERM A: mean (.5 + .625 + .75) / 3 = .625 -> 62.5; se = std([.5, .625, .75] / sqrt 3) = .125 * sqrt(2/3) / sqrt 3 -> 5.8926
        Assert.Equal(62.5, erm.Cells[0].Mean);
        Assert.Equal(5.892556509887896, erm.Cells[0].StdErr);
        // ERM B: (.75 + .75 + .875) / 3 = .791666... -> 79.1667; se = .125 * sqrt(2) / 3 / sqrt 3 -> 3.4021
        Assert.Equal(79.16666666666666, erm.Cells[1].Mean);
        Assert.Equal(3.4020690871988584, erm.Cells[1].StdErr);
        // Avg = (62.5 + 79.1667) / 2 = 70.8333
        Assert.Equal(70.83333333333333, erm.Average);
        // SFMoE A: (.75 + .875) / 2 = .8125 -> 81.25 exactly (printed 81.2: Python rounds the tie to even);
        // se = .125 / 2 / sqrt 2 -> 4.4194; B has no runs -> X, and so is Avg.
        Assert.Equal((81.25, 4.419417382415924, 2), (two.Rows[1].Cells[0].Mean!.Value, two.Rows[1].Cells[0].StdErr!.Value, two.Rows[1].Cells[0].Count));
        Assert.Null(two.Rows[1].Cells[1].Mean);
        Assert.Null(two.Rows[1].Average);
        // Averages: ERM per trial (A + B) / 2 = .625, .6875, .8125 -> mean 2.125 / 3 = .708333 -> 70.8333, se 4.5005.
        // SFMoE per trial: only A (DomainBed averages the envs it has) -> .75, .875 -> 81.25 +/- 4.4194.
        var avg = t.Averages;
        Assert.Equal(["Two"], avg.Columns);
        Assert.Equal([0.625, 0.6875, 0.8125], avg.Rows[0].Cells[0].Values);
        Assert.Equal((70.83333333333334, 4.5005143738943465), (avg.Rows[0].Cells[0].Mean!.Value, avg.Rows[0].Cells[0].StdErr!.Value));
        Assert.Equal(81.25, avg.Rows[1].Average);
    }

    [Fact]
    public void SmallSweepMarkdown()
    {
        using var tmp = new TempDir();
        var md = Collect.Format(Collect.Tables(SmallSweep(tmp), SelectionMethod.Oracle, Names), TableFormat.Markdown);
        Assert.Equal(
            """
            # DomainBed results

            Total records: 8

            ## Model selection: test-domain validation set (oracle)

            ### Dataset: Two

            | Algorithm | A | B | Avg |
            |---|---|---|---|
            | ERM | 62.5 ± 5.9 | 79.2 ± 3.4 | 70.8 |
            | SFMoE | 81.2 ± 4.4 | X | X |

            ### Averages

            | Algorithm | Two | Avg |
            |---|---|---|
            | ERM | 70.8 ± 4.5 | 70.8 |
            | SFMoE | 81.2 ± 4.4 | 81.2 |

            ## Runs

            Runs: 8, done: 8, incomplete (no done file): 0.

            ## Notes

            - Averages: SFMoE on Two, trial seed 0: the mean of 1 test env (A) out of 2, as DomainBed averages whatever it has
            - Averages: SFMoE on Two, trial seed 1: the mean of 1 test env (A) out of 2, as DomainBed averages whatever it has

            """.ReplaceLineEndings("\n"), md);
    }

    [Fact]
    public void SmallSweepCsv()
    {
        using var tmp = new TempDir();
        var csv = Collect.Format(Collect.Tables(SmallSweep(tmp), SelectionMethod.Oracle, Names), TableFormat.Csv);
        Assert.Equal(
            """
            selection_method,table,algorithm,column,mean,stderr,n,text
            test-domain validation set (oracle),Two,ERM,A,62.5,5.892556509887896,3,62.5 +/- 5.9
            test-domain validation set (oracle),Two,ERM,B,79.16666666666666,3.4020690871988584,3,79.2 +/- 3.4
            test-domain validation set (oracle),Two,ERM,Avg,70.83333333333333,,,70.8
            test-domain validation set (oracle),Two,SFMoE,A,81.25,4.419417382415924,2,81.2 +/- 4.4
            test-domain validation set (oracle),Two,SFMoE,B,,,0,X
            test-domain validation set (oracle),Two,SFMoE,Avg,,,,X
            test-domain validation set (oracle),Averages,ERM,Two,70.83333333333334,4.5005143738943465,3,70.8 +/- 4.5
            test-domain validation set (oracle),Averages,ERM,Avg,70.83333333333334,,,70.8
            test-domain validation set (oracle),Averages,SFMoE,Two,81.25,4.419417382415924,2,81.2 +/- 4.4
            test-domain validation set (oracle),Averages,SFMoE,Avg,81.25,,,81.2

            """.ReplaceLineEndings("\n"), csv);
    }

    [Fact]
    public void SmallSweepJsonAndLatexAndText()
    {
        using var tmp = new TempDir();
        var tables = Collect.Tables(SmallSweep(tmp), SelectionMethod.Oracle, Names);
        using var doc = JsonDocument.Parse(Collect.Format(tables, TableFormat.Json));
        var m = doc.RootElement.GetProperty("selection_methods")[0];
        Assert.Equal("oracle", m.GetProperty("key").GetString());
        var cell = m.GetProperty("datasets")[0].GetProperty("rows")[1].GetProperty("cells")[0];
        Assert.Equal(81.25, cell.GetProperty("mean").GetDouble());
        Assert.Equal("81.2 ± 4.4", cell.GetProperty("text").GetString());
        Assert.Equal(JsonValueKind.Null, m.GetProperty("datasets")[0].GetProperty("rows")[1].GetProperty("average").ValueKind);
        Assert.Equal(8, m.GetProperty("groups").GetArrayLength());
        Assert.Equal(8, doc.RootElement.GetProperty("runs").GetProperty("done").GetInt32());

        var tex = Collect.Format(tables, TableFormat.Latex).Split('\n');
        Assert.Contains("\\begin{tabular}{lccc}", tex);
        Assert.Contains("\\textbf{Algorithm}   & \\textbf{A}           & \\textbf{B}           & \\textbf{Avg}         \\\\", tex);
        Assert.Contains("SFMoE                & 81.2 $\\pm$ 4.4       & X                    & X                    \\\\", tex);
        Assert.Equal("\\end{document}", tex[^2]);

        var text = Collect.Format(tables, TableFormat.Text).Split('\n');
        Assert.Equal("Total records: 8", text[0]);
        Assert.Contains("ERM                   62.5 +/- 5.9          79.2 +/- 3.4          70.8                 ", text);
        Assert.Contains("SFMoE                      81.2 +/- 4.4               81.2                      ", text);
    }

    [Fact]
    public void EnvironmentNamesFallBackToEnvN()
    {
        using var tmp = new TempDir();
        var t = Collect.Tables(SmallSweep(tmp), SelectionMethod.Oracle);
        Assert.Equal(["env0", "env1"], t.Datasets[0].Columns);
    }

    [Fact]
    public void ToySweepTablesForAllThreeMethods()
    {
        using var tmp = new TempDir();
        var set = ModelSelectionTests.ToySweep(tmp);
        var all = Collect.AllTables(set, Names);
        string Cells(ResultTables t, bool averages = false)
        {
            var table = averages ? t.Averages : t.Datasets.Single();
            var row = table.Rows.Single();
            return string.Join(" | ", row.Cells.Select(c => Collect.FormatCell(c, TableFormat.Text)).Append(Collect.FormatAverage(row.Average)));
        }
        // Selected accuracies from ModelSelectionTests (trials 0, 1); env E2 has no single-test-env runs: X, so Avg X.
        // IID: E0 1.0, .75 -> 87.5 +/- 8.8; E1 .75, .625 -> 68.75 (prints 68.8) +/- 4.4.
        //      Averages: trial means (1.0 + .75)/2 = .875 and (.75 + .625)/2 = .6875 -> 78.125 (78.1) +/- 6.6.
        Assert.Equal("87.5 +/- 8.8 | 68.8 +/- 4.4 | X | X", Cells(all[0]));
        Assert.Equal("78.1 +/- 6.6 | 78.1", Cells(all[0], averages: true));
        // LOO: E0 .25, .5 -> 37.5 +/- 8.8; E1 has no {1,2} runs -> X.
        Assert.Equal("37.5 +/- 8.8 | X | X | X", Cells(all[1]));
        Assert.Equal("37.5 +/- 8.8 | 37.5", Cells(all[1], averages: true));
        // Oracle: E0 .875, .5 -> 68.75 (68.8) +/- 13.3; E1 .5, .5 -> 50.0 +/- 0.0.
        //      Averages: (.875 + .5)/2 = .6875 and (.5 + .5)/2 = .5 -> 59.375 (59.4) +/- 6.6.
        Assert.Equal("68.8 +/- 13.3 | 50.0 +/- 0.0 | X | X", Cells(all[2]));
        Assert.Equal("59.4 +/- 6.6 | 59.4", Cells(all[2], averages: true));

        // What the tables leave out is said at the end.
        Assert.Contains("leave-one-domain-out cross-validation: Toy ERM test env E1 trial seed 0 hparams seed 0: not selectable, " +
                        "missing the leave-one-out run with test_envs [1, 2]", all[1].Notes);
        Assert.Contains("leave-one-domain-out cross-validation: Toy ERM test env E1 trial seed 1: no result (the cell leaves this trial out)", all[1].Notes);
        Assert.Contains("training-domain validation set: Toy ERM test env E2 trial seed 0 hparams seed 0: not selectable, " +
                        "no run with this single test env (only runs holding out several envs)", all[0].Notes);
        Assert.Contains("Averages: ERM on Toy, trial seed 0: the mean of 2 test envs (E0, E1) out of 3, as DomainBed averages whatever it has", all[0].Notes);
        var text = Collect.Format(all, TableFormat.Text);
        Assert.Contains("\n-------- Runs: 16, done: 15, incomplete (no done file): 1; their records are included, as DomainBed does\n" +
                        "-------- incomplete: te02-trial1-hp1: Toy ERM test_envs=[0, 2] trial_seed=1 hparams_seed=1, 2 records, last step 100, no done file\n", text);
        var md = Collect.Format(all, TableFormat.Markdown);
        Assert.Contains("\n- te02-trial1-hp1: Toy ERM test_envs=[0, 2] trial_seed=1 hparams_seed=1, 2 records, last step 100, no done file\n", md);
        Assert.Contains("% incomplete: te02-trial1-hp1: Toy ERM", Collect.Format(all, TableFormat.Latex));
        Assert.StartsWith("Runs: 16, done: 15, incomplete (no done file): 1", Collect.RunReport(set));
    }

    [Fact]
    public void OrdersDatasetsAndAlgorithmsAsDomainBedAndKeepsUnknownDatasets()
    {
        // DomainBed: known algorithms in algorithms.ALGORITHMS order, then the rest in order of appearance;
        // known datasets in datasets.DATASETS order (it drops unknown ones; here they follow, sorted).
        var recs = new[]
        {
            R("PACS", [0], 0, 0, 0, [.5, .5, .5, .5], [.5, .5, .5, .5], "Zeta"),
            R("CUB", [0], 0, 0, 0, [.5, .5, .5, .5], [.5, .5, .5, .5], "SFMoE"),
            R("VLCS", [0], 0, 0, 0, [.5, .5, .5, .5], [.5, .5, .5, .5], "IRM"),
            R("Alpha", [0], 0, 0, 0, [.5, .5], [.5, .5], "ERM"),
        };
        var t = Collect.Tables(new RecordSet(recs), SelectionMethod.TrainingDomainValidation);
        Assert.Equal(["VLCS", "PACS", "Alpha", "CUB"], t.Datasets.Select(d => d.Name));
        Assert.Equal(["ERM", "IRM", "Zeta", "SFMoE"], t.Datasets[0].Rows.Select(r => r.Algorithm));
        Assert.Equal(["VLCS", "PACS", "Alpha", "CUB"], t.Averages.Columns);
    }

    [Fact]
    public void LatexEscapesSpecialCharactersInNames()
    {
        var recs = new[] { R("My_Set", [0], 0, 0, 0, [.5, .5], [.5, .5], "A&B_1") };
        var tex = Collect.Format(Collect.Tables(new RecordSet(recs), SelectionMethod.Oracle, _ => ["+90%", "x"]), TableFormat.Latex);
        Assert.Contains("\\subsubsection{My\\_Set}", tex);
        Assert.Contains("\\textbf{+90\\%}", tex);
        Assert.Contains("A\\&B\\_1", tex);
    }

    [Fact]
    public void ParsesFormatNames()
    {
        Assert.Equal(TableFormat.Markdown, Collect.ParseFormat("md"));
        Assert.Equal(TableFormat.Latex, Collect.ParseFormat("LaTeX"));
        Assert.Equal(TableFormat.Text, Collect.ParseFormat("text"));
        Assert.Throws<ArgumentException>(() => Collect.ParseFormat("html"));
    }

    // ------------------------------------------------------------------ DomainBed's own code, via the committed fixture

    static readonly string Dir = Fixture("collect");

    static JsonElement Expected() =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "expected", "expected.json"))).RootElement;

    static IReadOnlyList<ResultTables> FixtureTables(out RecordSet set)
    {
        var expected = Expected();
        var envs = expected.GetProperty("environments").EnumerateObject()
            .ToDictionary(p => p.Name, p => (IReadOnlyList<string>)p.Value.EnumerateArray().Select(e => e.GetString()!).ToArray());
        set = Records.Load(Path.Combine(Dir, "sweep"));
        return Collect.AllTables(set, d => envs.GetValueOrDefault(d));
    }

    [Fact]
    public void FixtureTextMatchesCollectResultsOutput()
    {
        var tables = FixtureTables(out var set);
        var expected = File.ReadAllText(Path.Combine(Dir, "expected", "domainbed.txt"));
        var text = Collect.Format(tables, TableFormat.Text);
        Assert.Equal(expected, text[..Math.Min(expected.Length, text.Length)]);
        var rest = text[expected.Length..];
        Assert.StartsWith("\n-------- Runs: 94, done: 92, incomplete (no done file): 2; their records are included, as DomainBed does\n", rest);
        Assert.Contains("-------- incomplete: pacs-SFMoE-te2-trial1-hp1: PACS SFMoE test_envs=[2] trial_seed=1 hparams_seed=1, 2 records, last step 100, last line truncated, no done file\n", rest);
        Assert.Contains("-------- incomplete: pacs-SFMoE-te03-trial0-hp1: PACS SFMoE test_envs=[0, 3] trial_seed=0 hparams_seed=1, 3 records, last step 200, no done file\n", rest);
        var problem = Assert.Single(set.Problems);
        Assert.Equal(("pacs-SFMoE-te2-trial1-hp1/results.jsonl", 3, ProblemSeverity.Warning), (problem.File, problem.Line, problem.Severity));
        Assert.Equal(374, set.Records.Count);
    }

    [Fact]
    public void FixtureLatexMatchesCollectResultsOutput()
    {
        var tables = FixtureTables(out _);
        var expected = File.ReadAllText(Path.Combine(Dir, "expected", "domainbed.tex"));
        const string end = "\\end{document}\n";
        Assert.EndsWith(end, expected);
        var body = expected[..^end.Length];
        var tex = Collect.Format(tables, TableFormat.Latex);
        Assert.Equal(body, tex[..Math.Min(body.Length, tex.Length)]);
        Assert.EndsWith(end, tex);
        Assert.All(tex[body.Length..^end.Length].Split('\n', StringSplitOptions.RemoveEmptyEntries), l => Assert.StartsWith("%", l));
    }

    [Fact]
    public void FixtureGroupsAndCellsMatchDomainBedExactly()
    {
        var tables = FixtureTables(out _);
        var methods = Expected().GetProperty("methods").EnumerateArray().ToArray();
        Assert.Equal(3, methods.Length);
        int compared = 0;
        for (int k = 0; k < 3; k++)
        {
            var t = tables[k];
            Assert.Equal(methods[k].GetProperty("name").GetString(), t.Method.Name);
            var groups = methods[k].GetProperty("groups").EnumerateArray().ToArray();
            Assert.Equal(groups.Length, t.Groups.Count);
            for (int i = 0; i < groups.Length; i++)
            {
                var e = groups[i];
                var g = t.Groups[i];
                Assert.Equal((e.GetProperty("trial_seed").GetInt32(), e.GetProperty("dataset").GetString(), e.GetProperty("algorithm").GetString(), e.GetProperty("test_env").GetInt32()),
                    (g.TrialSeed, g.Dataset, g.Algorithm, g.TestEnv));
                if (e.GetProperty("sweep_acc").ValueKind == JsonValueKind.Null)
                {
                    Assert.Null(g.Choice);
                    continue;
                }
                Assert.NotNull(g.Choice);
                Assert.Equal(e.GetProperty("sweep_acc").GetDouble(), g.SweepAcc);
                Assert.Equal(e.GetProperty("val_acc").GetDouble(), g.Choice!.Acc.ValAcc);
                Assert.Equal(e.GetProperty("hparams_seed").GetInt32(), g.Choice.HparamsSeed);
                compared++;
            }
            foreach (var c in methods[k].GetProperty("cells").EnumerateArray())
            {
                string table = c.GetProperty("table").GetString()!, alg = c.GetProperty("algorithm").GetString()!;
                ResultTable rt = table == "Averages" ? t.Averages : t.Datasets.Single(d => d.Name == table);
                int col = table == "Averages" ? rt.Columns.ToList().IndexOf(c.GetProperty("column").GetString()!) : c.GetProperty("column").GetInt32();
                var cell = rt.Rows.Single(r => r.Algorithm == alg).Cells[col];
                Assert.Equal(c.GetProperty("n").GetInt32(), cell.Count);
                if (c.GetProperty("mean").ValueKind == JsonValueKind.Null) Assert.Null(cell.Mean);
                else
                {
                    Assert.Equal(c.GetProperty("mean").GetDouble(), cell.Mean);       // bit-exact
                    Assert.Equal(c.GetProperty("stderr").GetDouble(), cell.StdErr);
                }
                compared++;
            }
        }
        Assert.True(compared >= 120, $"only {compared} values compared");
    }
}
