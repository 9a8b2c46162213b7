using System.Text;

namespace SfMoe.Runs;

// GitHub markdown tables.
public static partial class Collect
{
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
}
