/// `sfmoe collect`: DomainBed's model selection and result tables over run folders (SweepCommands.collect adds a
/// sweep's jobs that are not done).
module SfMoe.Cli.CollectCommands

open System
open Argu
open SfMoe
open SfMoe.Cli.Output

type CollectArgs =
    | [<Mandatory>] Input_Dir of dir: string
    | Format of format: string
    | Selection of method: string
    | Complete_Only
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Input_Dir _ -> "folder of run folders (each with results.jsonl)"
            | Format _ -> "markdown (default), latex, csv, json or text (DomainBed's own layout)"
            | Selection _ -> "iid (training-domain validation), loo (leave-one-domain-out) or oracle; default: all three"
            | Complete_Only -> "use only runs that finished (have a done file)"

let collect (a: ParseResults<CollectArgs>) =
    let dir = a.GetResult CollectArgs.Input_Dir
    if not (IO.Directory.Exists dir) then fail "--input-dir %s: folder not found" dir
    let format =
        try Runs.Collect.ParseFormat(a.GetResult(CollectArgs.Format, defaultValue = "markdown"))
        with :? ArgumentException as e -> fail "--format: %s" e.Message
    let records = Runs.Records.Load dir
    let records = if a.Contains CollectArgs.Complete_Only then records.CompleteRunsOnly() else records
    if records.Records.Count = 0 then fail "--input-dir %s: no results.jsonl records found" dir
    let envNames = Func<string, Collections.Generic.IReadOnlyList<string>>(Data.DatasetNames.EnvironmentsOf)
    let text =
        match a.TryGetResult CollectArgs.Selection with
        | Some m ->
            let meth =
                try Runs.SelectionMethod.Parse m
                with :? ArgumentException as e -> fail "--selection: %s" e.Message
            Runs.Collect.Format(Runs.Collect.Tables(records, meth, envNames), format)
        | None -> Runs.Collect.Format(Runs.Collect.AllTables(records, envNames), format)
    Console.Write text
    if format = Runs.TableFormat.Csv then eprintf "%s" (Runs.Collect.RunReport records)
    if records.HasErrors then 1 else 0
