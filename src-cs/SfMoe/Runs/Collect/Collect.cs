namespace SfMoe.Runs;

/// <summary>
/// DomainBed's collect_results.py: per dataset, algorithm and test env the mean ± standard error over trial seeds of
/// the selected test accuracy, an "Avg" column, and an averages table over datasets. This file builds the tables
/// (grouping, the selection method's choice, cells, notes); Format.cs and the five renderers (TextFormat.cs,
/// LatexFormat.cs, MarkdownFormat.cs, CsvFormat.cs, JsonFormat.cs) write them.
/// </summary>
public static partial class Collect
{
    /// <summary>DomainBed's algorithms.ALGORITHMS: table rows list these first, in this order, then the others in
    /// order of first appearance.</summary>
    public static IReadOnlyList<string> DomainBedAlgorithmOrder { get; } =
    [
        "ERM", "ERMPlusPlus", "Fish", "IRM", "GroupDRO", "Mixup", "MLDG", "CORAL", "MMD", "DANN", "CDANN", "MTL",
        "SagNet", "ARM", "VREx", "RSC", "SD", "ANDMask", "SANDMask", "IGA", "SelfReg", "Fishr", "TRM", "IB_ERM",
        "IB_IRM", "CAD", "CondCAD", "Transfer", "CausIRL_CORAL", "CausIRL_MMD", "EQRM", "RDM", "ADRMX", "URM",
    ];

    /// <summary>DomainBed's datasets.DATASETS: tables come in this order, then other datasets in ordinal order
    /// (DomainBed drops datasets it does not know).</summary>
    public static IReadOnlyList<string> DomainBedDatasetOrder { get; } =
    [
        "Debug28", "Debug224", "ColoredMNIST", "RotatedMNIST", "VLCS", "PACS", "OfficeHome", "TerraIncognita",
        "DomainNet", "SVIRO", "WILDSCamelyon", "WILDSFMoW", "SpawriousO2O_easy", "SpawriousO2O_medium",
        "SpawriousO2O_hard", "SpawriousM2M_easy", "SpawriousM2M_medium", "SpawriousM2M_hard",
    ];

    /// <summary>
    /// Computes collect_results.py's tables for one selection method. <paramref name="environmentNames"/> maps a
    /// dataset name to its environment names in index order (e.g. PACS: A, C, P, S); it also fixes the number of
    /// test envs (columns), as DomainBed's dataset classes do. Without it, or when it returns null or an empty list,
    /// the columns are env0, env1, ... up to the largest environment count found in the dataset's records.
    /// </summary>
    public static ResultTables Tables(RecordSet records, SelectionMethod method,
        Func<string, IReadOnlyList<string>?>? environmentNames = null)
    {
        ArgumentNullException.ThrowIfNull(records);
        ArgumentNullException.ThrowIfNull(method);

        // get_grouped_records: groups in order of first appearance; a record joins one group per test env.
        var groupRecords = new Dictionary<(int, string, string, int), List<RunRecord>>();
        var groupOrder = new List<(int Trial, string Dataset, string Algorithm, int Env)>();
        foreach (var r in records.Records)
            foreach (int env in r.TestEnvs)
            {
                var key = (r.TrialSeed, r.Dataset, r.Algorithm, env);
                if (!groupRecords.TryGetValue(key, out var list))
                {
                    groupRecords[key] = list = [];
                    groupOrder.Add(key);
                }
                list.Add(r);
            }
        var groups = groupOrder
            .Select(k => new GroupResult(k.Trial, k.Dataset, k.Algorithm, k.Env, groupRecords[k], method.SweepChoice(groupRecords[k])))
            .ToArray();
        var selected = groups.Where(g => g.SweepAcc is not null).ToArray();

        var seenAlgorithms = records.Records.Select(r => r.Algorithm).Distinct().ToList();
        var algorithms = DomainBedAlgorithmOrder.Where(seenAlgorithms.Contains)
            .Concat(seenAlgorithms.Where(a => !DomainBedAlgorithmOrder.Contains(a))).ToArray();
        var seenDatasets = records.Records.Select(r => r.Dataset).Distinct().ToList();
        var datasets = DomainBedDatasetOrder.Where(seenDatasets.Contains)
            .Concat(seenDatasets.Where(d => !DomainBedDatasetOrder.Contains(d)).OrderBy(d => d, StringComparer.Ordinal)).ToArray();

        var envNames = new Dictionary<string, IReadOnlyList<string>>();
        foreach (var d in datasets)
        {
            var names = environmentNames?.Invoke(d);
            if (names is null || names.Count == 0)
            {
                var ofDataset = records.Records.Where(r => r.Dataset == d).ToArray();
                int n = Math.Max(ofDataset.Max(r => r.EnvCount), ofDataset.SelectMany(r => r.TestEnvs).DefaultIfEmpty(-1).Max() + 1);
                names = Enumerable.Range(0, n).Select(i => $"env{i}").ToArray();
            }
            envNames[d] = names;
        }

        var byCell = selected.GroupBy(g => (g.Dataset, g.Algorithm, g.TestEnv))
            .ToDictionary(g => g.Key, g => g.Select(x => x.SweepAcc!.Value).ToArray());
        var datasetTables = new List<ResultTable>();
        foreach (var d in datasets)
        {
            var columns = envNames[d];
            var rows = algorithms.Select(a =>
            {
                var cells = Enumerable.Range(0, columns.Count)
                    .Select(env => Cell(byCell.TryGetValue((d, a, env), out var v) ? v : [])).ToArray();
                return new TableRow(a, cells, RowAverage(cells));
            }).ToArray();
            datasetTables.Add(new ResultTable(d, $"Dataset: {d}, model selection method: {method.Name}", columns, rows));
        }

        var notes = new List<string>();
        var averageRows = algorithms.Select(a =>
        {
            var cells = datasets.Select(d =>
            {
                var trials = selected.Where(g => g.Algorithm == a && g.Dataset == d).Group(g => g.TrialSeed);
                foreach (var (trial, gs) in trials)
                    if (gs.Count != envNames[d].Count)
                        notes.Add($"Averages: {a} on {d}, trial seed {trial}: the mean of {gs.Count} test env{(gs.Count == 1 ? "" : "s")} " +
                                  $"({string.Join(", ", gs.Select(g => EnvName(envNames[d], g.TestEnv)))}) out of {envNames[d].Count}, as DomainBed averages whatever it has");
                return Cell(trials.Select(t => PyNum.Mean(t.Value.Select(g => g.SweepAcc!.Value).ToArray())).ToArray());
            }).ToArray();
            return new TableRow(a, cells, RowAverage(cells));
        }).ToArray();
        var averages = new ResultTable("Averages", $"Averages, model selection method: {method.Name}", datasets, averageRows);

        notes.InsertRange(0, GroupNotes(groups, method, envNames));
        return new ResultTables(method, datasetTables, averages, groups, notes, records);
    }

    /// <summary>The tables of the three methods, in collect_results.py's order.</summary>
    public static IReadOnlyList<ResultTables> AllTables(RecordSet records, Func<string, IReadOnlyList<string>?>? environmentNames = null) =>
        SelectionMethod.All.Select(m => Tables(records, m, environmentNames)).ToArray();

    static string EnvName(IReadOnlyList<string> names, int env) => env < names.Count ? names[env] : $"env{env}";

    static IEnumerable<string> GroupNotes(IEnumerable<GroupResult> groups, SelectionMethod method, Dictionary<string, IReadOnlyList<string>> envNames)
    {
        foreach (var g in groups)
        {
            string where = $"{method.Name}: {g.Dataset} {g.Algorithm} test env {EnvName(envNames[g.Dataset], g.TestEnv)} trial seed {g.TrialSeed}";
            var chosen = method.HparamsAccs(g.Records).Select(h => h.HparamsSeed).ToHashSet();
            foreach (var (seed, recs) in g.Records.Group(r => r.HparamsSeed))
                if (!chosen.Contains(seed))
                    yield return $"{where} hparams seed {seed}: not selectable, {Reason(method, g.TestEnv, recs, envNames[g.Dataset].Count)}";
            if (g.Choice is null) yield return $"{where}: no result (the cell leaves this trial out)";
        }
    }

    static string Reason(SelectionMethod method, int testEnv, IReadOnlyList<RunRecord> records, int nEnvs)
    {
        if (!records.Any(r => r.TestEnvs.Count == 1))
            return "no run with this single test env (only runs holding out several envs)";
        if (method is not LeaveOneOutSelectionMethod) return "no usable record";
        var partners = records.Where(r => r.TestEnvs.Count == 2).SelectMany(r => r.TestEnvs).Where(e => e != testEnv).ToHashSet();
        var missing = Enumerable.Range(0, nEnvs).Where(j => j != testEnv && !partners.Contains(j)).ToArray();
        return missing.Length > 0
            ? $"missing the leave-one-out run{(missing.Length == 1 ? "" : "s")} with test_envs {string.Join(", ", missing.Select(j => $"[{Math.Min(j, testEnv)}, {Math.Max(j, testEnv)}]"))}"
            : "no step at which the run and every leave-one-out run have a record (an unfinished run?)";
    }

    static TableCell Cell(double[] values)
    {
        if (values.Length == 0) return new TableCell(values, null, null);
        double root = Math.Sqrt(values.Length);
        return new TableCell(values, 100 * PyNum.Mean(values), 100 * PyNum.Std(values.Select(v => v / root).ToArray()));
    }

    static double? RowAverage(IReadOnlyList<TableCell> cells) =>
        cells.Count == 0 || cells.Any(c => c.Mean is null) ? null : PyNum.PySum(cells.Select(c => c.Mean!.Value)) / cells.Count;
}
