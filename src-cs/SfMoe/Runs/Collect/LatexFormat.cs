using System.Text;

namespace SfMoe.Runs;

// DomainBed's LaTeX document (collect_results.py --latex).
public static partial class Collect
{
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
}
