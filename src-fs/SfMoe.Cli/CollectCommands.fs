/// `sfmoe collect`: DomainBed's model selection and result tables over run folders; on a sweep's folder, also the
/// sweep's jobs that are not done.
module SfMoe.Cli.CollectCommands

open System
open Argu
open SfMoe
open SfMoe.Cli.Output
open SfMoe.Runs.Sweeps

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

let private tables (a: ParseResults<CollectArgs>) =
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

/// The jobs of a sweep that are not done, for `sfmoe collect` on a sweep folder: failed and killed jobs are listed
/// (with Slurm's state and the last error of their log), not silently left out of the tables.
let private sweepReport (dir: string) =
    let st = Sweep.Status(SweepManifest.Load dir, SlurmClient())
    [ yield sprintf "Sweep (%s): %s" SweepManifest.FileName st.Summary
      for s in st.Jobs do
          if s.State <> JobState.Done then
              let extra =
                  [ (if s.State = JobState.Incomplete then Some s.Progress else None)
                    Option.ofObj s.SchedulerText |> Option.map (fun t -> "Slurm " + t)
                    Option.ofObj s.LastError
                    (if isNull s.Log then None else Some("log: " + s.Log)) ]
                  |> List.choose id
              yield sprintf "%s: %s %s%s" (JobStatus.Name s.State) s.Job.Id (s.Job.Describe())
                        (if extra.IsEmpty then "" else ": " + String.Join("; ", extra))
      for n in st.Notes do yield "note: " + n ]

/// `sfmoe collect`, followed, on a sweep's folder, by the sweep's jobs that are not done.
let collect (a: ParseResults<CollectArgs>) =
    let dir = a.GetResult CollectArgs.Input_Dir
    let format = a.GetResult(CollectArgs.Format, defaultValue = "markdown").Trim().ToLowerInvariant()
    let report (toStderr: bool) =
        if IO.Directory.Exists dir && SweepManifest.Exists dir then
            let lines = sweepReport dir
            if toStderr then for l in lines do eprintfn "%s" l
            else
                match format with
                | "markdown" ->
                    Console.WriteLine()
                    Console.WriteLine "## Sweep"
                    Console.WriteLine()
                    for l in lines do Console.WriteLine("- " + l)
                | "latex" -> for l in lines do Console.WriteLine("% " + l)
                | _ -> for l in lines do Console.WriteLine("-------- " + l)
    let code =
        try tables a
        with _ ->
            (try report true with _ -> ())
            reraise ()
    report (format = "csv" || format = "json")
    code
