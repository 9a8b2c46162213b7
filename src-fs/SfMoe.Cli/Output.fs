/// Printing helpers for the CLI: aligned tables, JSON, and the user-error convention.
module SfMoe.Cli.Output

open System
open System.IO
open System.Text.Json

/// A user error: printed as one line on stderr, exit code 2.
exception UsageError of string

let fail fmt = Printf.ksprintf (fun s -> raise (UsageError s)) fmt

/// Print rows as an aligned table (first row is the header); numeric-looking cells are right-aligned.
let table (out: TextWriter) (rows: string list list) =
    match rows with
    | [] -> ()
    | header :: _ ->
        let widths = [ for i in 0 .. header.Length - 1 -> rows |> List.map (fun r -> (List.item i r).Length) |> List.max ]
        let isNum (s: string) = s <> "" && s |> Seq.forall (fun c -> Char.IsDigit c || c = ',' || c = '.' || c = '-' || c = 'x' || c = '%')
        for r in rows do
            r
            |> List.mapi (fun i c -> if isNum c && i > 0 then c.PadLeft widths[i] else c.PadRight widths[i])
            |> String.concat "  "
            |> fun s -> out.WriteLine(s.TrimEnd())

let json (value: obj) =
    JsonSerializer.Serialize(value, JsonSerializerOptions(WriteIndented = false))

let thousands (n: int64) = n.ToString("N0", Globalization.CultureInfo.InvariantCulture)
