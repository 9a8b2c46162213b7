using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace SfMoe.Runs;

// Tables, groups, runs and problems as JSON.
public static partial class Collect
{
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
