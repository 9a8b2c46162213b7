/// `sfmoe pattern`: a block pattern's canonical form and blocks, and with a model its parameters and MACs per block.
module SfMoe.Cli.PatternCommands

open System
open Argu
open SfMoe
open SfMoe.Core
open SfMoe.Cli.Output
open SfMoe.Cli.Inputs

type PatternArgs =
    | [<MainCommand; ExactlyOnce>] Pattern of pattern: string
    | Depth of n: int
    | Model of name: string
    | Model_Config of file: string
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Pattern _ -> "a block pattern such as \"[S,F]x6\", \"Fx5,S,Fx5,S\", \"SFSF\", or a preset (sfmoe, sfmoe-dg, gmoe, vit)"
            | Depth _ -> "check that the pattern has exactly this many blocks"
            | Model _ -> "also print parameters and multiply-accumulates per block of this registry model with the pattern"
            | Model_Config _ -> "the same for a model config JSON file"
            | Json -> "print {\"pattern\": ..., \"blocks\": [...]} (and the per-block table with --model)"

/// JSON shape of `sfmoe pattern --json` (field order as documented).
type PatternJson = { pattern: string; blocks: string seq }

type PartJson = { name: string; kind: string; ``params``: int64; active_params: int64; macs: int64 }
type PatternModelJson = { pattern: string; blocks: string seq; parts: PartJson list; total_params: int64; total_macs: int64 }

let pattern (a: ParseResults<PatternArgs>) =
    let text = a.GetResult PatternArgs.Pattern
    let model = a.TryGetResult PatternArgs.Model
    let file = a.TryGetResult PatternArgs.Model_Config
    let info =
        match a.TryGetResult PatternArgs.Depth, model, file with
        | Some d, _, _ -> Patterns.Parse(text, positive "depth" d)
        | None, None, None -> Patterns.Parse text
        | None, _, _ -> Patterns.Parse text
    let table =
        if model.IsNone && file.IsNone then None
        else
            let c = loadConfig model file
            let p = Core.Pattern.parseOrFail info.Canonical
            let c = { c with Pattern = p }
            match Config.VitConfig.validate c with
            | Error e -> fail "%s" e
            | Ok c -> Some(Summary.table c)
    if a.Contains PatternArgs.Json then
        match table with
        | None -> Console.WriteLine(json { pattern = info.Canonical; blocks = info.Blocks })
        | Some t ->
            let parts = [ for n, k, p, ap, m in t -> { name = n; kind = k; ``params`` = p; active_params = ap; macs = m } ]
            Console.WriteLine(
                json
                    { pattern = info.Canonical
                      blocks = info.Blocks
                      parts = parts
                      total_params = parts |> List.sumBy (fun p -> p.``params``)
                      total_macs = parts |> List.sumBy (fun p -> p.macs) })
    else
        Console.WriteLine("pattern: " + info.Canonical)
        Console.WriteLine(sprintf "blocks (%d): %s" info.Depth (String.Join(" ", info.Blocks)))
        let sparse = info.Blocks |> Seq.indexed |> Seq.filter (fun (_, k) -> k = "S") |> Seq.map (fst >> string) |> Seq.toList
        Console.WriteLine("sparse blocks (0-based): " + (if sparse.IsEmpty then "none" else String.Join(", ", sparse)))
        match table with
        | None -> ()
        | Some t ->
            let mac (m: int64) = sprintf "%.1fM" (float m / 1e6)
            Output.table Console.Out
                [ yield [ "part"; "kind"; "params"; "active/token"; "MACs/image" ]
                  for n, k, p, ap, m in t -> [ n; k; thousands p; thousands ap; mac m ]
                  yield [ "total"; ""; thousands (t |> List.sumBy (fun (_, _, p, _, _) -> p))
                          thousands (t |> List.sumBy (fun (_, _, _, ap, _) -> ap))
                          sprintf "%.2fG" (float (t |> List.sumBy (fun (_, _, _, _, m) -> m)) / 1e9) ] ]
    0
