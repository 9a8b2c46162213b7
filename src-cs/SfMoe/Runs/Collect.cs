using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

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

/// <summary>
/// DomainBed's collect_results.py: per dataset, algorithm and test env the mean ± standard error over trial seeds of
/// the selected test accuracy, an "Avg" column, and an averages table over datasets.
/// </summary>
public static class Collect
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

    // ---------------------------------------------------------------- formatting

    /// <summary>"md"/"markdown", "tex"/"latex", "csv", "json", "txt"/"text" (case-insensitive); throws <see cref="ArgumentException"/>.</summary>
    public static TableFormat ParseFormat(string name) => name.Trim().ToLowerInvariant() switch
    {
        "markdown" or "md" => TableFormat.Markdown,
        "latex" or "tex" => TableFormat.Latex,
        "csv" => TableFormat.Csv,
        "json" => TableFormat.Json,
        "text" or "txt" => TableFormat.Text,
        _ => throw new ArgumentException($"unknown format \"{name}\"; expected markdown, latex, csv, json or text"),
    };

    /// <summary>A cell as DomainBed prints it: "85.1 +/- 0.3" (text), "85.1 $\pm$ 0.3" (LaTeX), "85.1 ± 0.3"
    /// (markdown, JSON, CSV uses "+/-"), or "X" when missing.</summary>
    public static string FormatCell(TableCell cell, TableFormat format)
    {
        if (cell.Mean is not { } m || cell.StdErr is not { } e) return "X";
        string pm = format switch { TableFormat.Latex => "$\\pm$", TableFormat.Markdown or TableFormat.Json => "±", _ => "+/-" };
        return $"{PyNum.Fixed(m, 1)} {pm} {PyNum.Fixed(e, 1)}";
    }

    /// <summary>The "Avg" column: one decimal, or "X".</summary>
    public static string FormatAverage(double? average) => average is { } a ? PyNum.Fixed(a, 1) : "X";

    /// <summary>One method's tables as a document (see the other overload).</summary>
    public static string Format(ResultTables tables, TableFormat format) => Format([tables], format);

    /// <summary>
    /// The tables of one or more methods (computed from the same <see cref="RecordSet"/>) as one document, in
    /// collect_results.py's layout: "Total records", then per method the dataset tables and the averages table;
    /// then, except in CSV, the runs (every incomplete one listed), the reading problems and the notes. Text and
    /// LaTeX match DomainBed's output character for character up to that closing part, except that cells longer than
    /// the column width are not cut and LaTeX special characters in names are escaped.
    /// </summary>
    public static string Format(IReadOnlyList<ResultTables> tables, TableFormat format)
    {
        ArgumentNullException.ThrowIfNull(tables);
        if (tables.Count == 0) throw new ArgumentException("no tables to format", nameof(tables));
        var source = tables[0].Source;
        if (tables.Any(t => !ReferenceEquals(t.Source, source)))
            throw new ArgumentException("the tables come from different record sets", nameof(tables));
        return format switch
        {
            TableFormat.Text => Text(tables, source),
            TableFormat.Latex => Latex(tables, source),
            TableFormat.Markdown => Markdown(tables, source),
            TableFormat.Csv => Csv(tables),
            TableFormat.Json => Json(tables, source),
            _ => throw new ArgumentOutOfRangeException(nameof(format)),
        };
    }

    /// <summary>
    /// The runs, incomplete runs and reading problems as plain text lines (what the other formats append; for CSV
    /// output, print this on stderr).
    /// </summary>
    public static string RunReport(RecordSet records)
    {
        var sb = new StringBuilder();
        foreach (var line in RunLines(records)) sb.Append(line).Append('\n');
        foreach (var p in records.Problems) sb.Append(p).Append('\n');
        return sb.ToString();
    }

    static IEnumerable<string> RunLines(RecordSet records)
    {
        var incomplete = records.IncompleteRuns;
        yield return $"Runs: {records.Runs.Count}, done: {records.Runs.Count - incomplete.Count}, incomplete (no done file): {incomplete.Count}" +
                     (incomplete.Count > 0 ? "; their records are included, as DomainBed does" : "");
        foreach (var run in incomplete) yield return "incomplete: " + run;
    }

    static void Line(StringBuilder sb, string s = "") => sb.Append(s).Append('\n');

    // DomainBed's misc.print_row: cells left-justified to the column width, joined by sep, then print's " " and end.
    static string Row(IEnumerable<string> cells, int width, bool latex) =>
        string.Join(latex ? " & " : "  ", cells.Select(c => c.PadRight(width))) + (latex ? " \\\\" : " ");

    static IEnumerable<(ResultTable Table, int Width, bool IsAverages)> TablesOf(ResultTables t) =>
        t.Datasets.Select(d => (d, 20, false)).Append((t.Averages, 25, true));

    static IEnumerable<string> Labels(ResultTable table) => table.Columns.Prepend("Algorithm").Append("Avg");

    static IEnumerable<string> Values(TableRow row, TableFormat format) =>
        row.Cells.Select(c => FormatCell(c, format)).Prepend(row.Algorithm).Append(FormatAverage(row.Average));

    static IEnumerable<string> NoteLines(IReadOnlyList<ResultTables> tables) => tables.SelectMany(t => t.Notes);

    static string Text(IReadOnlyList<ResultTables> tables, RecordSet source)
    {
        var sb = new StringBuilder();
        Line(sb, $"Total records: {source.Records.Count}");
        foreach (var t in tables)
            foreach (var (table, width, _) in TablesOf(t))
            {
                Line(sb);
                Line(sb, "-------- " + table.Header);
                Line(sb, Row(Labels(table), width, false));
                foreach (var row in table.Rows) Line(sb, Row(Values(row, TableFormat.Text), width, false));
            }
        Line(sb);
        foreach (var l in RunLines(source)) Line(sb, "-------- " + l);
        if (source.Problems.Count > 0)
        {
            Line(sb, $"-------- Problems while reading: {source.Problems.Count}");
            foreach (var p in source.Problems) Line(sb, p.ToString());
        }
        var notes = NoteLines(tables).ToArray();
        if (notes.Length > 0)
        {
            Line(sb, $"-------- Notes: {notes.Length}");
            foreach (var n in notes) Line(sb, n);
        }
        return sb.ToString();
    }

    /// <summary>Escapes LaTeX's special characters (DomainBed escapes only % in column labels).</summary>
    static string TeX(string s)
    {
        var sb = new StringBuilder();
        foreach (char c in s)
            sb.Append(c switch
            {
                '\\' => "\\textbackslash{}",
                '~' => "\\textasciitilde{}",
                '^' => "\\textasciicircum{}",
                '%' or '&' or '$' or '#' or '_' or '{' or '}' => "\\" + c,
                _ => c.ToString(),
            });
        return sb.ToString();
    }

    static string Latex(IReadOnlyList<ResultTables> tables, RecordSet source)
    {
        var sb = new StringBuilder();
        Line(sb, "\\documentclass{article}");
        Line(sb, "\\usepackage{booktabs}");
        Line(sb, "\\usepackage{adjustbox}");
        Line(sb, "\\begin{document}");
        Line(sb, "\\section{Full DomainBed results}");
        Line(sb, $"% Total records: {source.Records.Count}");
        foreach (var t in tables)
        {
            Line(sb);
            Line(sb, $"\\subsection{{Model selection: {TeX(t.Method.Name)}}}");
            foreach (var (table, width, _) in TablesOf(t))
            {
                Line(sb);
                Line(sb, $"\\subsubsection{{{TeX(table.Name)}}}");
                Line(sb);
                Line(sb, "\\begin{center}");
                Line(sb, "\\adjustbox{max width=\\textwidth}{%");
                Line(sb, "\\begin{tabular}{l" + new string('c', table.Columns.Count + 1) + "}");
                Line(sb, "\\toprule");
                Line(sb, Row(Labels(table).Select(l => "\\textbf{" + TeX(l) + "}"), width, true));
                Line(sb, "\\midrule");
                foreach (var row in table.Rows)
                    Line(sb, Row(Values(row, TableFormat.Latex).Select((v, i) => i == 0 ? TeX(v) : v), width, true));
                Line(sb, "\\bottomrule");
                Line(sb, "\\end{tabular}}");
                Line(sb, "\\end{center}");
            }
        }
        Line(sb);
        foreach (var l in RunLines(source)) Line(sb, "% " + l);
        foreach (var p in source.Problems) Line(sb, "% " + p);
        foreach (var n in NoteLines(tables)) Line(sb, "% note: " + n);
        Line(sb, "\\end{document}");
        return sb.ToString();
    }

    static string Md(string s) => s.Replace("|", "\\|");

    static string Markdown(IReadOnlyList<ResultTables> tables, RecordSet source)
    {
        var sb = new StringBuilder();
        Line(sb, "# DomainBed results");
        Line(sb);
        Line(sb, $"Total records: {source.Records.Count}");
        foreach (var t in tables)
        {
            Line(sb);
            Line(sb, $"## Model selection: {t.Method.Name}");
            foreach (var (table, _, isAverages) in TablesOf(t))
            {
                Line(sb);
                Line(sb, isAverages ? "### Averages" : $"### Dataset: {Md(table.Name)}");
                Line(sb);
                Line(sb, "| " + string.Join(" | ", Labels(table).Select(Md)) + " |");
                Line(sb, "|" + string.Concat(Enumerable.Repeat("---|", table.Columns.Count + 2)));
                foreach (var row in table.Rows)
                    Line(sb, "| " + string.Join(" | ", Values(row, TableFormat.Markdown).Select(Md)) + " |");
            }
        }
        Line(sb);
        Line(sb, "## Runs");
        Line(sb);
        var runLines = RunLines(source).ToArray();
        Line(sb, runLines[0] + ".");
        if (runLines.Length > 1)
        {
            Line(sb);
            foreach (var run in source.IncompleteRuns) Line(sb, "- " + Md(run.ToString()));
        }
        if (source.Problems.Count > 0)
        {
            Line(sb);
            Line(sb, "## Problems while reading");
            Line(sb);
            foreach (var p in source.Problems) Line(sb, "- " + Md(p.ToString()));
        }
        var notes = NoteLines(tables).ToArray();
        if (notes.Length > 0)
        {
            Line(sb);
            Line(sb, "## Notes");
            Line(sb);
            foreach (var n in notes) Line(sb, "- " + Md(n));
        }
        return sb.ToString();
    }

    static string CsvField(string s) =>
        s.IndexOfAny([',', '"', '\n', '\r']) >= 0 ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;

    static string Num(double? x) => x is { } v ? PyNum.Repr(v) : "";

    static string Csv(IReadOnlyList<ResultTables> tables)
    {
        var sb = new StringBuilder();
        Line(sb, "selection_method,table,algorithm,column,mean,stderr,n,text");
        foreach (var t in tables)
            foreach (var (table, _, _) in TablesOf(t))
                foreach (var row in table.Rows)
                {
                    string prefix = $"{CsvField(t.Method.Name)},{CsvField(table.Name)},{CsvField(row.Algorithm)},";
                    for (int c = 0; c < table.Columns.Count; c++)
                    {
                        var cell = row.Cells[c];
                        Line(sb, prefix + $"{CsvField(table.Columns[c])},{Num(cell.Mean)},{Num(cell.StdErr)},{cell.Count},{CsvField(FormatCell(cell, TableFormat.Csv))}");
                    }
                    Line(sb, prefix + $"Avg,{Num(row.Average)},,,{FormatAverage(row.Average)}");
                }
        return sb.ToString();
    }

    static string Json(IReadOnlyList<ResultTables> tables, RecordSet source)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            void Number(string name, double? x)
            {
                if (x is { } v && double.IsFinite(v)) w.WriteNumber(name, v);
                else w.WriteNull(name);
            }
            void Table(ResultTable table)
            {
                w.WriteStartObject();
                w.WriteString("name", table.Name);
                w.WriteString("header", table.Header);
                w.WriteStartArray("columns");
                foreach (var c in table.Columns) w.WriteStringValue(c);
                w.WriteEndArray();
                w.WriteStartArray("rows");
                foreach (var row in table.Rows)
                {
                    w.WriteStartObject();
                    w.WriteString("algorithm", row.Algorithm);
                    w.WriteStartArray("cells");
                    for (int c = 0; c < table.Columns.Count; c++)
                    {
                        var cell = row.Cells[c];
                        w.WriteStartObject();
                        w.WriteString("column", table.Columns[c]);
                        Number("mean", cell.Mean);
                        Number("stderr", cell.StdErr);
                        w.WriteNumber("n", cell.Count);
                        w.WriteStartArray("values");
                        foreach (var v in cell.Values) { if (double.IsFinite(v)) w.WriteNumberValue(v); else w.WriteNullValue(); }
                        w.WriteEndArray();
                        w.WriteString("text", FormatCell(cell, TableFormat.Json));
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                    Number("average", row.Average);
                    w.WriteString("average_text", FormatAverage(row.Average));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }

            w.WriteStartObject();
            w.WriteNumber("total_records", source.Records.Count);
            w.WriteStartArray("selection_methods");
            foreach (var t in tables)
            {
                w.WriteStartObject();
                w.WriteString("name", t.Method.Name);
                w.WriteString("key", t.Method.Key);
                w.WriteStartArray("datasets");
                foreach (var d in t.Datasets) Table(d);
                w.WriteEndArray();
                w.WritePropertyName("averages");
                Table(t.Averages);
                w.WriteStartArray("groups");
                foreach (var g in t.Groups)
                {
                    w.WriteStartObject();
                    w.WriteNumber("trial_seed", g.TrialSeed);
                    w.WriteString("dataset", g.Dataset);
                    w.WriteString("algorithm", g.Algorithm);
                    w.WriteNumber("test_env", g.TestEnv);
                    if (g.Choice is { } c)
                    {
                        w.WriteNumber("hparams_seed", c.HparamsSeed);
                        w.WriteNumber("step", c.Acc.Step);
                        Number("val_acc", c.Acc.ValAcc);
                        Number("test_acc", c.Acc.TestAcc);
                        w.WriteString("run", c.Acc.Record.Run.RelativeDirectory);
                    }
                    else w.WriteNull("hparams_seed");
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartArray("notes");
                foreach (var n in t.Notes) w.WriteStringValue(n);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("runs");
            w.WriteNumber("total", source.Runs.Count);
            w.WriteNumber("done", source.Runs.Count(r => r.Done));
            w.WriteStartArray("incomplete");
            foreach (var run in source.IncompleteRuns)
            {
                w.WriteStartObject();
                w.WriteString("dir", run.RelativeDirectory);
                w.WriteString("identity", run.Identity);
                w.WriteNumber("records", run.RecordCount);
                if (run.LastStep is { } s) w.WriteNumber("last_step", s); else w.WriteNull("last_step");
                w.WriteBoolean("truncated_last_line", run.TruncatedLastLine);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteStartArray("problems");
            foreach (var p in source.Problems)
            {
                w.WriteStartObject();
                w.WriteString("severity", p.Severity == ProblemSeverity.Warning ? "warning" : "error");
                w.WriteString("file", p.File);
                w.WriteNumber("line", p.Line);
                w.WriteString("message", p.Message);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray()) + "\n";
    }
}
