using System.Text;

namespace SfMoe.Runs;

// Formatting: the format names, cells, the dispatch to the renderers and what they share.
public static partial class Collect
{
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
}
