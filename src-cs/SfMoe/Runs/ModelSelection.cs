namespace SfMoe.Runs;

/// <summary>What a selection method chose within one run: a checkpoint's validation and test accuracy (fractions).</summary>
/// <param name="ValAcc">The accuracy the choice maximises.</param>
/// <param name="TestAcc">The test environment's in-split accuracy at the chosen step.</param>
/// <param name="Step">The chosen step.</param>
/// <param name="Record">The single-test-environment record whose <see cref="TestAcc"/> is reported.</param>
public sealed record SelectedAcc(double ValAcc, double TestAcc, long Step, RunRecord Record);

/// <summary>One hyperparameter setting's choice: its run_acc and the records of that hparams seed.</summary>
/// <param name="HparamsSeed">args.hparams_seed.</param>
/// <param name="Acc">The run's choice (<see cref="SelectionMethod.RunAcc"/>).</param>
/// <param name="Records">All records of the (dataset, algorithm, test env, trial seed) group with this hparams seed.</param>
public sealed record HparamsAcc(int HparamsSeed, SelectedAcc Acc, IReadOnlyList<RunRecord> Records);

/// <summary>
/// DomainBed's model selection (domainbed/model_selection.py): choose a checkpoint within each hyperparameter setting
/// (<see cref="RunAcc"/>), then the setting (<see cref="HparamsAccs"/>, <see cref="SweepAcc"/>). Every method sees the
/// records of one (dataset, algorithm, test env, trial seed) group, which include the two-test-environment runs that
/// hold that environment out.
/// </summary>
public abstract class SelectionMethod
{
    private protected SelectionMethod() { }

    /// <summary>DomainBed's name, as in its table headers, e.g. "training-domain validation set".</summary>
    public abstract string Name { get; }
    /// <summary>Short key: "iid", "loo" or "oracle".</summary>
    public abstract string Key { get; }

    /// <summary>
    /// The choice within the records of one hparams seed (of one group), or null when the records do not allow one
    /// (no single-test-env record; for leave-one-out, no step with every partner run).
    /// </summary>
    public abstract SelectedAcc? RunAcc(IReadOnlyList<RunRecord> runRecords);

    /// <summary>
    /// DomainBed's hparams_accs: the records grouped by hparams seed (ascending), each group's run_acc, groups without
    /// one dropped, sorted by val_acc descending. DomainBed sorts ascending (stably, NaN as -infinity) and reverses,
    /// so among equal val_acc the <b>higher hparams seed comes first</b>: ties across hparams go to the last maximum,
    /// unlike ties across steps (first maximum).
    /// </summary>
    public IReadOnlyList<HparamsAcc> HparamsAccs(IReadOnlyList<RunRecord> records)
    {
        var accs = new List<HparamsAcc>();
        foreach (var (seed, runRecords) in records.Group(r => r.HparamsSeed))
            if (RunAcc(runRecords) is { } acc) accs.Add(new HparamsAcc(seed, acc, runRecords));
        var sorted = accs.Sorted(a => a.Acc.ValAcc).ToList();
        sorted.Reverse();
        return sorted;
    }

    /// <summary>The chosen hparams seed and checkpoint (the first of <see cref="HparamsAccs"/>), or null.</summary>
    public HparamsAcc? SweepChoice(IReadOnlyList<RunRecord> records) => HparamsAccs(records) is [var first, ..] ? first : null;

    /// <summary>DomainBed's sweep_acc: the test accuracy of the chosen hparams seed and checkpoint, or null.</summary>
    public double? SweepAcc(IReadOnlyList<RunRecord> records) => SweepChoice(records)?.Acc.TestAcc;

    /// <summary>Training-domain validation (<see cref="IIDAccuracySelectionMethod"/>).</summary>
    public static SelectionMethod TrainingDomainValidation { get; } = new IIDAccuracySelectionMethod();
    /// <summary>Leave-one-domain-out cross-validation (<see cref="LeaveOneOutSelectionMethod"/>).</summary>
    public static SelectionMethod LeaveOneDomainOut { get; } = new LeaveOneOutSelectionMethod();
    /// <summary>Test-domain validation, the oracle (<see cref="OracleSelectionMethod"/>).</summary>
    public static SelectionMethod Oracle { get; } = new OracleSelectionMethod();
    /// <summary>The three methods in collect_results.py's order: training-domain, leave-one-domain-out, oracle.</summary>
    public static IReadOnlyList<SelectionMethod> All { get; } = [TrainingDomainValidation, LeaveOneDomainOut, Oracle];

    /// <summary>
    /// A method by key or name: "iid" / "training-domain", "loo" / "leave-one-domain-out", "oracle" / "test-domain"
    /// (case-insensitive; DomainBed's full names too). Throws <see cref="ArgumentException"/> listing the choices.
    /// </summary>
    public static SelectionMethod Parse(string name)
    {
        var n = name.Trim().ToLowerInvariant();
        foreach (var m in All)
            if (n == m.Key || n == m.Name.ToLowerInvariant()) return m;
        return n switch
        {
            "training-domain" or "train-validation" or "train-val" or "training-domain-validation" => TrainingDomainValidation,
            "leave-one-domain-out" or "lodo" => LeaveOneDomainOut,
            "test-domain" or "test-domain-validation" => Oracle,
            _ => throw new ArgumentException(
                $"unknown model selection method \"{name}\"; expected iid (training-domain), loo (leave-one-domain-out) or oracle (test-domain)"),
        };
    }

    /// <summary>The records with exactly one test environment (DomainBed's get_test_records).</summary>
    protected static IEnumerable<RunRecord> TestRecords(IEnumerable<RunRecord> records) => records.Where(r => r.TestEnvs.Count == 1);

    /// <summary>The method's DomainBed name.</summary>
    public override string ToString() => Name;
}

/// <summary>
/// Training-domain validation ("training-domain validation set"): for each single-test-env record, val = mean over the
/// training environments of envN_out_acc (the environments counted as env0_out_acc, env1_out_acc, ... up to the first
/// missing key), test = env{test}_in_acc; within a run the record with the largest val (the first, i.e. the earliest
/// line, on ties).
/// </summary>
public sealed class IIDAccuracySelectionMethod : SelectionMethod
{
    /// <inheritdoc/>
    public override string Name => "training-domain validation set";
    /// <inheritdoc/>
    public override string Key => "iid";

    /// <summary>One record's (val, test): DomainBed's _step_acc (np.mean of the training environments' out accuracies).</summary>
    public static SelectedAcc StepAcc(RunRecord record)
    {
        int test = record.TestEnvs[0];
        var vals = new List<double>();
        for (int i = 0; i < record.EnvCount; i++)
            if (i != test) vals.Add(record.OutAcc(i));
        return new SelectedAcc(PyNum.Mean(vals.ToArray()), record.InAcc(test), record.Step, record);
    }

    /// <inheritdoc/>
    public override SelectedAcc? RunAcc(IReadOnlyList<RunRecord> runRecords)
    {
        var steps = TestRecords(runRecords).Select(StepAcc).ToArray();
        return steps.Length == 0 ? null : steps.ArgMax(s => s.ValAcc);
    }
}

/// <summary>
/// Leave-one-domain-out cross-validation ("leave-one-domain-out cross-validation"): the records are grouped by step
/// (ascending); at a step, with exactly one single-test-env record (test env t) and, for every other environment j,
/// a record of a run holding out {t, j}: val = sum_j env{j}_in_acc of that run / (n_envs - 1), test = env{t}_in_acc
/// of the single-test-env record. Steps missing any partner, or with zero or several single-test-env records, are
/// skipped. The step with the largest val wins (the earliest on ties).
/// </summary>
public sealed class LeaveOneOutSelectionMethod : SelectionMethod
{
    /// <inheritdoc/>
    public override string Name => "leave-one-domain-out cross-validation";
    /// <inheritdoc/>
    public override string Key => "loo";

    /// <summary>
    /// DomainBed's _step_acc for the records of one step, or null. n_envs is the environment count of the step's first
    /// record; when several runs hold out the same {t, j}, the last one read wins.
    /// </summary>
    public static SelectedAcc? StepAcc(IReadOnlyList<RunRecord> stepRecords)
    {
        var tests = TestRecords(stepRecords).ToArray();
        if (tests.Length != 1) return null;
        var testRecord = tests[0];
        int t = testRecord.TestEnvs[0];
        int nEnvs = stepRecords[0].EnvCount;
        var val = new double[nEnvs];
        Array.Fill(val, -1.0);
        foreach (var r in stepRecords.Where(r => r.TestEnvs.Count == 2))
        {
            // Python: (set(test_envs) - {t}).pop(); the group only holds records whose test_envs contain t.
            var others = r.TestEnvs.Where(e => e != t).Distinct().ToArray();
            if (others.Length != 1)
                throw new InvalidDataException($"{r.Where}: test_envs [{string.Join(", ", r.TestEnvs)}] do not hold out test env {t} and one other");
            int j = others[0];
            if (j >= nEnvs)
                throw new InvalidDataException($"{r.Where}: test env {j} is beyond the {nEnvs} environments of {stepRecords[0].Where}");
            val[j] = r.InAcc(j);
        }
        var rest = val.Where((_, i) => i != t).ToArray();
        if (rest.Any(v => v == -1.0)) return null;
        return new SelectedAcc(PyNum.Sum(rest) / (nEnvs - 1), testRecord.InAcc(t), testRecord.Step, testRecord);
    }

    /// <inheritdoc/>
    public override SelectedAcc? RunAcc(IReadOnlyList<RunRecord> runRecords)
    {
        var steps = runRecords.Group(r => r.Step)
            .Select(g => StepAcc(g.Value)).OfType<SelectedAcc>().ToArray();
        return steps.Length == 0 ? null : steps.ArgMax(s => s.ValAcc);
    }
}

/// <summary>
/// Test-domain validation, the oracle ("test-domain validation set (oracle)"): no early stopping; each run's last
/// single-test-env record (the largest step; the last line read among equal steps) gives val = env{t}_out_acc and
/// test = env{t}_in_acc; the hparams seed with the largest val wins.
/// </summary>
public sealed class OracleSelectionMethod : SelectionMethod
{
    /// <inheritdoc/>
    public override string Name => "test-domain validation set (oracle)";
    /// <inheritdoc/>
    public override string Key => "oracle";

    /// <inheritdoc/>
    public override SelectedAcc? RunAcc(IReadOnlyList<RunRecord> runRecords)
    {
        var tests = TestRecords(runRecords).ToArray();
        if (tests.Length == 0) return null;
        int t = tests[0].TestEnvs[0];
        // Python's sorted is stable: the last element is the last record with the largest step.
        var chosen = tests.Select((r, i) => (r, i)).OrderBy(x => x.r.Step).ThenBy(x => x.i).Last().r;
        return new SelectedAcc(chosen.OutAcc(t), chosen.InAcc(t), chosen.Step, chosen);
    }
}
