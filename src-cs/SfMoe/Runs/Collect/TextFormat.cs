using System.Text;

namespace SfMoe.Runs;

// DomainBed's plain-text output (collect_results.py).
public static partial class Collect
{
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
}
