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

/// The CLI's logger for library messages: one plain line each on stderr ("warning: " before warnings), from
/// `minLevel` up (--quiet: warnings only).
type ConsoleLogger(minLevel: Microsoft.Extensions.Logging.LogLevel) =
    interface Microsoft.Extensions.Logging.ILogger with
        member _.BeginScope _ = null
        member _.IsEnabled level = level >= minLevel && level <> Microsoft.Extensions.Logging.LogLevel.None
        member this.Log(level, _, state, ex, formatter) =
            if (this :> Microsoft.Extensions.Logging.ILogger).IsEnabled level then
                let msg = formatter.Invoke(state, ex)
                let prefix = if level >= Microsoft.Extensions.Logging.LogLevel.Warning then "warning: " else ""
                lock Console.Error (fun () -> Console.Error.WriteLine(prefix + msg))

/// A choice among named values, case-insensitively: the value, or a usage error naming the flag and the names.
let choice (flag: string) (choices: (string * 'a) list) (s: string) =
    match choices |> List.tryFind (fun (n, _) -> String.Equals(n, s, StringComparison.OrdinalIgnoreCase)) with
    | Some(_, v) -> v
    | None ->
        let names = choices |> List.map fst
        let listed = if names.Length < 2 then String.Join("", names) else String.Join(", ", List.take (names.Length - 1) names) + " or " + List.last names
        fail "%s must be %s, got %s" flag listed s

/// The expert policies of --experts (train and import).
let experts = [ "copy", SfMoe.Runs.ExpertInit.Copy; "random", SfMoe.Runs.ExpertInit.Random ]

/// The precisions of --precision (train, evaluate, bench, profile, forward).
let precisions = [ "fp32", SfMoe.Precision.Fp32; "tf32", SfMoe.Precision.Tf32; "bf16", SfMoe.Precision.Bf16 ]

/// A --precision value: the precision, or a usage error naming the value and the choices.
let precisionOf (s: string) = choice "--precision" precisions s

/// The core's precision of a --precision value.
let corePrecisionOf (s: string) =
    match precisionOf s with
    | SfMoe.Precision.Fp32 -> SfMoe.Core.Tensors.Precision.Fp32
    | SfMoe.Precision.Tf32 -> SfMoe.Core.Tensors.Precision.Tf32
    | _ -> SfMoe.Core.Tensors.Precision.Bf16

/// Usage text of --precision.
let precisionUsage = "fp32 (default), tf32 (TF32 tensor cores on CUDA; changes nothing on a CPU) or bf16 (mixed precision: bfloat16 matmuls and attention, float32 weights, optimizer, norms, router and loss)"
