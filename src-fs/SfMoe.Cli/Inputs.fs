/// Reading user input that several commands share: positive counts, choices, model configs.
module SfMoe.Cli.Inputs

open System
open SfMoe
open SfMoe.Core
open SfMoe.Cli.Output

/// A count that must be >= 1; the usage error names the flag (without its dashes).
let positive name (v: int) = if v < 1 then fail "--%s must be >= 1, got %d" name v else v

/// A model config from a registry name or a JSON file (exactly one of them).
let loadConfig (model: string option) (file: string option) : Config.VitConfig =
    match model, file with
    | Some _, Some _ -> fail "give --model or --model-config, not both"
    | None, None -> fail "give --model NAME or --model-config FILE"
    | Some name, None ->
        match Registry.tryCreate name with
        | Ok c -> c
        | Error e -> fail "%s" e
    | None, Some path ->
        if not (IO.File.Exists path) then fail "model config %s: file not found" path
        try ModelSpec.parseVit (IO.File.ReadAllText path)
        with :? ConfigException as e -> fail "model config %s: %s" path e.Message

/// A value among exactly spelled names; the usage error lists them.
let parseChoice (what: string) (choices: (string * 'a) list) (s: string) =
    match choices |> List.tryFind (fun (n, _) -> n = s) with
    | Some(_, v) -> v
    | None -> fail "%s must be %s, got %s" what (String.Join(", ", choices |> List.map fst)) s
