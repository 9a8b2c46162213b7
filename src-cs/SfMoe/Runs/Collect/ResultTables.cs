namespace SfMoe.Runs;

/// <summary>
/// The records of one (trial seed, dataset, algorithm, test env) group (DomainBed's get_grouped_records: a record
/// with two test envs belongs to both groups) and the selection method's choice in it.
/// </summary>
/// <param name="TrialSeed">args.trial_seed.</param>
/// <param name="Dataset">args.dataset.</param>
/// <param name="Algorithm">args.algorithm.</param>
/// <param name="TestEnv">The test environment the group is about.</param>
/// <param name="Records">The group's records in reading order.</param>
/// <param name="Choice">The chosen hparams seed and checkpoint, null when the method could not choose.</param>
public sealed record GroupResult(int TrialSeed, string Dataset, string Algorithm, int TestEnv,
    IReadOnlyList<RunRecord> Records, HparamsAcc? Choice)
{
    /// <summary>DomainBed's sweep_acc: the chosen test accuracy (a fraction), null when none.</summary>
    public double? SweepAcc => Choice?.Acc.TestAcc;
}

/// <summary>One table cell: the values it summarises and their mean ± standard error in percent.</summary>
/// <param name="Values">Fractions in DomainBed's order: a dataset table holds the sweep accuracy of each trial seed
/// (in reading order); the averages table the mean over test envs of each trial seed (ascending seeds).</param>
/// <param name="Mean">100 · np.mean(values), null when there are none ("X").</param>
/// <param name="StdErr">100 · np.std(values / sqrt(n)) (ddof 0), null when there are none.</param>
public sealed record TableCell(IReadOnlyList<double> Values, double? Mean, double? StdErr)
{
    /// <summary>Number of values.</summary>
    public int Count => Values.Count;
}

/// <summary>One algorithm's row.</summary>
/// <param name="Algorithm">args.algorithm.</param>
/// <param name="Cells">One cell per column of the table.</param>
/// <param name="Average">The "Avg" column: Python's sum of the cell means / their number (percent); null ("X") when
/// any cell is missing.</param>
public sealed record TableRow(string Algorithm, IReadOnlyList<TableCell> Cells, double? Average);

/// <summary>A table of collect_results.py: one per dataset (columns = environments) and the averages table
/// (columns = datasets). The "Algorithm" and "Avg" columns are implied.</summary>
/// <param name="Name">The dataset, or "Averages".</param>
/// <param name="Header">DomainBed's header, e.g. "Dataset: PACS, model selection method: training-domain validation set".</param>
/// <param name="Columns">Environment names (dataset tables) or dataset names (averages).</param>
/// <param name="Rows">One row per algorithm, in DomainBed's order.</param>
public sealed record ResultTable(string Name, string Header, IReadOnlyList<string> Columns, IReadOnlyList<TableRow> Rows);

/// <summary>Everything collect_results.py prints for one selection method, and what it leaves unsaid.</summary>
public sealed class ResultTables
{
    internal ResultTables(SelectionMethod method, IReadOnlyList<ResultTable> datasets, ResultTable averages,
        IReadOnlyList<GroupResult> groups, IReadOnlyList<string> notes, RecordSet source)
    {
        Method = method; Datasets = datasets; Averages = averages; Groups = groups; Notes = notes; Source = source;
    }

    /// <summary>The selection method.</summary>
    public SelectionMethod Method { get; }
    /// <summary>One table per dataset.</summary>
    public IReadOnlyList<ResultTable> Datasets { get; }
    /// <summary>The averages table.</summary>
    public ResultTable Averages { get; }
    /// <summary>Every (trial seed, dataset, algorithm, test env) group, in first-appearance order, with its choice.</summary>
    public IReadOnlyList<GroupResult> Groups { get; }
    /// <summary>Groups and hparams seeds the method could not use, and averages over fewer test envs than the dataset has.</summary>
    public IReadOnlyList<string> Notes { get; }
    /// <summary>The records the tables were computed from.</summary>
    public RecordSet Source { get; }
}

/// <summary>Output formats of <see cref="Collect.Format(IReadOnlyList{ResultTables}, TableFormat)"/>.</summary>
public enum TableFormat
{
    /// <summary>GitHub markdown tables, "mean ± se".</summary>
    Markdown,
    /// <summary>DomainBed's LaTeX document (collect_results.py --latex).</summary>
    Latex,
    /// <summary>One row per cell: selection_method,table,algorithm,column,mean,stderr,n,text. Runs and problems are not included.</summary>
    Csv,
    /// <summary>Tables, groups, runs and problems as JSON.</summary>
    Json,
    /// <summary>DomainBed's plain-text output (collect_results.py without --latex).</summary>
    Text,
}
