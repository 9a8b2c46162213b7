using System.Text;

namespace SfMoe.Runs;

// One CSV row per table cell.
public static partial class Collect
{
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
}
