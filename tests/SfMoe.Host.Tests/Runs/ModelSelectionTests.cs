using SfMoe.Runs;
using static SfMoe.Host.Tests.Runs.SweepBuilder;

namespace SfMoe.Host.Tests.Runs;

/// <summary>
/// The three DomainBed selection methods on hand-made records; every expected number is worked out in the comments.
/// Accuracies are multiples of 1/8, so sums and means are exact.
/// </summary>
public class ModelSelectionTests
{
    const string Toy = "Toy";   // 3 environments

    static RunRecord Single(int env, int trial, int hp, long step, double test, double trainOut, double testOut = 0.5)
    {
        var inAcc = new[] { 0.5, 0.5, 0.5 };
        var outAcc = new[] { trainOut, trainOut, trainOut };
        inAcc[env] = test;
        outAcc[env] = testOut;
        return R(Toy, [env], trial, hp, step, inAcc, outAcc);
    }

    // ------------------------------------------------------------------ training-domain validation

    [Fact]
    public void IidPicksTheFirstBestStepAndOnHparamsTiesTheHigherSeed()
    {
        RunRecord Rec(int hp, long step, double in0, double out0, double out1, double out2) =>
            R(Toy, [0], 0, hp, step, [in0, 0.5, 0.5], [out0, out1, out2]);
        var records = new List<RunRecord>
        {
            // hparams 0: val = mean(out1, out2); out0 belongs to the test env and is left out.
            Rec(0, 0, 0.5, 0.0, 0.5, 0.5),       // val (0.5 + 0.5) / 2 = 0.5
            Rec(0, 100, 0.625, 0.0, 0.75, 0.75), // val 0.75                           <- first maximum
            Rec(0, 200, 0.875, 1.0, 0.875, 0.625), // val (0.875 + 0.625) / 2 = 0.75 (tie; with out0 it would be 0.833)
            // hparams 1:
            Rec(1, 0, 0.5, 0.5, 0.5, 0.75),      // val 0.625
            Rec(1, 100, 0.75, 0.5, 0.75, 0.75),  // val 0.75                           <- chosen, test 0.75
            Rec(1, 200, 1.0, 0.5, 0.5, 0.5),     // val 0.5
            // a leave-one-out run of the same group: not a test record, ignored (its val would be 1.0)
            R(Toy, [0, 1], 0, 0, 300, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),
        };
        var m = SelectionMethod.TrainingDomainValidation;

        var run0 = m.RunAcc(records.Where(r => r.HparamsSeed == 0).ToArray())!;
        Assert.Equal((0.75, 0.625, 100L), (run0.ValAcc, run0.TestAcc, run0.Step));
        var run1 = m.RunAcc(records.Where(r => r.HparamsSeed == 1).ToArray())!;
        Assert.Equal((0.75, 0.75, 100L), (run1.ValAcc, run1.TestAcc, run1.Step));

        // Both hparams seeds reach val 0.75: DomainBed sorts ascending (stable) and reverses, so seed 1 comes first.
        var accs = m.HparamsAccs(records);
        Assert.Equal([1, 0], accs.Select(a => a.HparamsSeed));
        Assert.Equal(0.75, m.SweepAcc(records));
        Assert.Null(m.RunAcc([records[^1]]));                      // only a two-test-env record: nothing to choose
    }

    [Fact]
    public void IidCountsEnvironmentsUpToTheFirstMissingOutAccuracy()
    {
        // env0..env2 out accuracies, then env4 (no env3): DomainBed counts 3 environments and ignores env4.
        var r = RunRecord.Parse(Rec(Toy, "ERM", [0], 0, 0, 0, [0.25, 0.5, 0.5], [0.0, 0.5, 0.75], "\"env4_out_acc\": 1.0"));
        Assert.Equal(3, r.EnvCount);
        var s = IIDAccuracySelectionMethod.StepAcc(r);
        Assert.Equal((0.625, 0.25), (s.ValAcc, s.TestAcc));        // (0.5 + 0.75) / 2, env0_in_acc
    }

    // ------------------------------------------------------------------ leave-one-domain-out

    static RunRecord Pair(int a, int b, int trial, int hp, long step, double valIn)
    {
        // A run holding out {a, b}; for test env a, env b's in accuracy is the validation accuracy.
        var inAcc = new[] { 0.5, 0.5, 0.5 };
        inAcc[b] = valIn;
        return R(Toy, [a, b], trial, hp, step, inAcc, [0.5, 0.5, 0.5]);
    }

    [Fact]
    public void LeaveOneOutAveragesThePartnerRunsAndSkipsStepsWithAPartnerMissing()
    {
        var records = new List<RunRecord>
        {
            // hparams 0, test env 0: val(step) = (env1_in of {0,1} + env2_in of {0,2}) / (3 - 1)
            Single(0, 0, 0, 0, test: 0.5, trainOut: 0.5), Pair(0, 1, 0, 0, 0, 0.5), Pair(0, 2, 0, 0, 0, 0.5),          // (0.5 + 0.5) / 2 = 0.5
            Single(0, 0, 0, 100, test: 0.625, trainOut: 0.5), Pair(0, 1, 0, 0, 100, 0.75), Pair(0, 2, 0, 0, 100, 0.5),  // (0.75 + 0.5) / 2 = 0.625 <- first max
            Single(0, 0, 0, 200, test: 0.875, trainOut: 0.5), Pair(0, 1, 0, 0, 200, 0.5), Pair(0, 2, 0, 0, 200, 0.75),  // 0.625 (tie)
            // hparams 1: the {0,2} run has no step 200 yet, so step 200 (val would be 1.0) is skipped.
            Single(0, 0, 1, 0, test: 0.25, trainOut: 0.5), Pair(0, 1, 0, 1, 0, 0.75), Pair(0, 2, 0, 1, 0, 0.75),        // 0.75 <- chosen
            Single(0, 0, 1, 100, test: 0.5, trainOut: 0.5), Pair(0, 1, 0, 1, 100, 0.5), Pair(0, 2, 0, 1, 100, 0.5),     // 0.5
            Single(0, 0, 1, 200, test: 1.0, trainOut: 0.5), Pair(0, 1, 0, 1, 200, 1.0),                                 // skipped
        };
        var m = SelectionMethod.LeaveOneDomainOut;
        var run0 = m.RunAcc(records.Where(r => r.HparamsSeed == 0).ToArray())!;
        Assert.Equal((0.625, 0.625, 100L), (run0.ValAcc, run0.TestAcc, run0.Step));
        var run1 = m.RunAcc(records.Where(r => r.HparamsSeed == 1).ToArray())!;
        Assert.Equal((0.75, 0.25, 0L), (run1.ValAcc, run1.TestAcc, run1.Step));
        var choice = m.SweepChoice(records)!;
        Assert.Equal((1, 0.25), (choice.HparamsSeed, choice.Acc.TestAcc));
        Assert.Null(LeaveOneOutSelectionMethod.StepAcc(records.Where(r => r.HparamsSeed == 1 && r.Step == 200).ToArray()));
    }

    [Fact]
    public void LeaveOneOutGivesNothingWithoutEveryPartnerRun()
    {
        // Test env 1 needs {0,1} and {1,2}; only {0,1} exists.
        var records = new[]
        {
            Single(1, 0, 0, 0, test: 0.75, trainOut: 0.5), Pair(0, 1, 0, 0, 0, 0.5),
            Single(1, 0, 0, 100, test: 0.875, trainOut: 0.5), Pair(0, 1, 0, 0, 100, 0.5),
        };
        Assert.Null(SelectionMethod.LeaveOneDomainOut.RunAcc(records));
        Assert.Null(SelectionMethod.LeaveOneDomainOut.SweepAcc(records));
        Assert.Empty(SelectionMethod.LeaveOneDomainOut.HparamsAccs(records));
        // Two single-test-env records at one step (a duplicated run) also leave the step out.
        Assert.Null(LeaveOneOutSelectionMethod.StepAcc([records[0], records[0], Pair(1, 0, 0, 0, 0, 0.5), Pair(1, 2, 0, 0, 0, 0.5)]));
    }

    // ------------------------------------------------------------------ oracle

    [Fact]
    public void OracleTakesTheLastStepAndTheLastLineAmongEqualSteps()
    {
        var records = new[]
        {
            // hparams 0: the last step (200) counts, not the best one (100): val 0.625, test 0.75
            Single(0, 0, 0, 0, test: 0.5, trainOut: 0.5, testOut: 0.5),
            Single(0, 0, 0, 100, test: 1.0, trainOut: 0.5, testOut: 1.0),
            Single(0, 0, 0, 200, test: 0.75, trainOut: 0.5, testOut: 0.625),
            // hparams 1: lines out of order and step 200 written twice: the later line wins: val 0.625, test 0.875
            Single(0, 0, 1, 0, test: 0.5, trainOut: 0.5, testOut: 0.5),
            Single(0, 0, 1, 200, test: 0.5, trainOut: 0.5, testOut: 0.625),
            Single(0, 0, 1, 100, test: 0.75, trainOut: 0.5, testOut: 0.75),
            Single(0, 0, 1, 200, test: 0.875, trainOut: 0.5, testOut: 0.625),
            Pair(0, 1, 0, 1, 300, 1.0),   // ignored: two test envs
        };
        var m = SelectionMethod.Oracle;
        var run0 = m.RunAcc(records.Where(r => r.HparamsSeed == 0).ToArray())!;
        Assert.Equal((0.625, 0.75, 200L), (run0.ValAcc, run0.TestAcc, run0.Step));
        var run1 = m.RunAcc(records.Where(r => r.HparamsSeed == 1).ToArray())!;
        Assert.Same(records[6], run1.Record);
        Assert.Equal((0.625, 0.875), (run1.ValAcc, run1.TestAcc));
        // val tie 0.625 / 0.625: the higher hparams seed wins.
        Assert.Equal(0.875, m.SweepAcc(records));
    }

    [Fact]
    public void ParsesMethodNames()
    {
        Assert.Same(SelectionMethod.TrainingDomainValidation, SelectionMethod.Parse("iid"));
        Assert.Same(SelectionMethod.TrainingDomainValidation, SelectionMethod.Parse("training-domain validation set"));
        Assert.Same(SelectionMethod.LeaveOneDomainOut, SelectionMethod.Parse("LOO"));
        Assert.Same(SelectionMethod.Oracle, SelectionMethod.Parse("test-domain"));
        Assert.Equal(["iid", "loo", "oracle"], SelectionMethod.All.Select(m => m.Key));
        Assert.Contains("expected iid", Assert.Throws<ArgumentException>(() => SelectionMethod.Parse("best")).Message);
    }

    // ------------------------------------------------------------------ a whole sweep, all three methods

    /// <summary>
    /// Toy (3 envs): single-test-env runs for test envs 0 and 1, trial seeds 0 and 1, hparams seeds 0 and 1, steps
    /// 0/100/200; leave-one-out runs {0,1} and {0,2} only (so test env 1 has no leave-one-out result), and the {0,2}
    /// run of trial 1, hparams 1 stopped after step 100. Per run and step k: T = test env in acc, V = training envs' out
    /// acc (IID val), O = test env out acc (oracle val); per pair run L = the validation env's in acc.
    /// </summary>
    internal static List<string> ToySweepLines(out Dictionary<string, List<string>> runs)
    {
        runs = [];
        var r = runs;
        void Run(int e, int t, int h, double[] T, double[] V, double[] O)
        {
            var lines = new List<string>();
            for (int k = 0; k < 3; k++)
            {
                var inAcc = new[] { 0.5, 0.5, 0.5 }; inAcc[e] = T[k];
                var outAcc = new[] { V[k], V[k], V[k] }; outAcc[e] = O[k];
                lines.Add(Rec(Toy, "ERM", [e], t, h, 100 * k, inAcc, outAcc));
            }
            r[$"te{e}-trial{t}-hp{h}"] = lines;
        }
        void PairRun(int b, int t, int h, double[] L)
        {
            var lines = new List<string>();
            for (int k = 0; k < L.Length; k++)
            {
                var inAcc = new[] { 0.5, 0.5, 0.5 }; inAcc[b] = L[k];
                lines.Add(Rec(Toy, "ERM", [0, b], t, h, 100 * k, inAcc, [0.5, 0.5, 0.5]));
            }
            r[$"te0{b}-trial{t}-hp{h}"] = lines;
        }
        //        env trial hp   T                    V                     O
        Run(0, 0, 0, [.5, .625, .875], [.5, .75, .75], [.5, .5, .75]);
        Run(0, 0, 1, [.25, .5, 1.0], [.5, .625, .75], [.5, .5, .625]);
        Run(0, 1, 0, [.75, .5, .5], [.875, .5, .5], [.5, .5, 1.0]);
        Run(0, 1, 1, [.5, .5, .625], [.5, .5, .625], [.5, .5, .5]);
        Run(1, 0, 0, [.5, .75, .25], [.5, .625, .625], [.5, .5, .5]);
        Run(1, 0, 1, [.375, .5, .5], [.5, .5, .5], [.5, .5, .625]);
        Run(1, 1, 0, [.625, .875, .5], [.75, .75, .75], [.5, .5, .75]);
        Run(1, 1, 1, [.5, .5, .5], [.5, .5, .5], [.5, .5, .75]);
        //            val env, trial, hp, L
        PairRun(1, 0, 0, [.5, .75, .5]);
        PairRun(2, 0, 0, [.5, .5, .75]);
        PairRun(1, 0, 1, [.75, .5, .5]);
        PairRun(2, 0, 1, [.75, .5, .5]);
        PairRun(1, 1, 0, [.5, .5, .5]);
        PairRun(2, 1, 0, [.5, .5, .5]);
        PairRun(1, 1, 1, [.5, .5, .875]);
        PairRun(2, 1, 1, [.5, .5]);           // stopped after step 100
        return runs.Values.SelectMany(x => x).ToList();
    }

    internal static RecordSet ToySweep(TempDir tmp)
    {
        ToySweepLines(out var runs);
        foreach (var (name, lines) in runs) WriteRun(tmp.Path, name, lines, done: name != "te02-trial1-hp1");
        return Records.Load(tmp.Path);
    }

    // DomainBed's get_grouped_records for one dataset and algorithm: a record joins the group of each of its test envs.
    static Dictionary<(int Env, int Trial), (double? Acc, int? Hp)> Choices(RecordSet set, SelectionMethod m) =>
        set.Records.SelectMany(r => r.TestEnvs.Select(e => (Env: e, Rec: r)))
            .GroupBy(x => (x.Env, x.Rec.TrialSeed))
            .ToDictionary(g => g.Key, g =>
            {
                var choice = m.SweepChoice(g.Select(x => x.Rec).ToArray());
                return (choice?.Acc.TestAcc, choice?.HparamsSeed);
            });

    [Fact]
    public void IidOnTheToySweep()
    {
        using var tmp = new TempDir();
        var c = Choices(ToySweep(tmp), SelectionMethod.TrainingDomainValidation);
        // env 0, trial 0: hp0 V=[.5,.75,.75] -> step 100 (first max), val .75, T .625;
        //                 hp1 V=[.5,.625,.75] -> step 200, val .75, T 1.0; tie .75 = .75 -> hp1 -> 1.0
        Assert.Equal((1.0, 1), c[(0, 0)]);
        // env 0, trial 1: hp0 step 0 val .875 T .75; hp1 step 200 val .625 T .625 -> hp0 -> .75
        Assert.Equal((0.75, 0), c[(0, 1)]);
        // env 1, trial 0: hp0 step 100 val .625 T .75; hp1 step 0 val .5 T .375 -> hp0 -> .75
        Assert.Equal((0.75, 0), c[(1, 0)]);
        // env 1, trial 1: hp0 step 0 val .75 T .625; hp1 val .5 -> hp0 -> .625
        Assert.Equal((0.625, 0), c[(1, 1)]);
    }

    [Fact]
    public void LeaveOneOutOnTheToySweep()
    {
        using var tmp = new TempDir();
        var c = Choices(ToySweep(tmp), SelectionMethod.LeaveOneDomainOut);
        // env 0, trial 0: hp0 val = ([.5,.75,.5] + [.5,.5,.75]) / 2 = [.5,.625,.625] -> step 100, T .625, val .625;
        //                 hp1 val = ([.75,.5,.5] + [.75,.5,.5]) / 2 = [.75,.5,.5] -> step 0, T .25, val .75 -> hp1 -> .25
        Assert.Equal((0.25, 1), c[(0, 0)]);
        // env 0, trial 1: hp0 val [.5,.5,.5] -> step 0, T .75, val .5;
        //                 hp1 val [.5,.5, skipped: {0,2} has no step 200] -> step 0, T .5, val .5; tie -> hp1 -> .5
        //                 (had step 200 counted with the {0,1} run alone, its val .875 would win with T .625)
        Assert.Equal((0.5, 1), c[(0, 1)]);
        // env 1: no {1,2} runs -> nothing
        Assert.Equal((null, null), c[(1, 0)]);
        Assert.Equal((null, null), c[(1, 1)]);
    }

    [Fact]
    public void OracleOnTheToySweep()
    {
        using var tmp = new TempDir();
        var c = Choices(ToySweep(tmp), SelectionMethod.Oracle);
        // last step (200): env 0 trial 0: hp0 O .75 T .875, hp1 O .625 -> hp0 -> .875
        Assert.Equal((0.875, 0), c[(0, 0)]);
        // env 0 trial 1: hp0 O 1.0 T .5, hp1 O .5 -> hp0 -> .5
        Assert.Equal((0.5, 0), c[(0, 1)]);
        // env 1 trial 0: hp0 O .5, hp1 O .625 T .5 -> hp1 -> .5
        Assert.Equal((0.5, 1), c[(1, 0)]);
        // env 1 trial 1: tie O .75 / .75 -> hp1 -> T .5
        Assert.Equal((0.5, 1), c[(1, 1)]);
    }
}
