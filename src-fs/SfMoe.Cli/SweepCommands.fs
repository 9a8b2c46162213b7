/// `sfmoe sweep launch|status|wait|delete-incomplete` over SfMoe.Runs.Sweeps, and the sweep report of `sfmoe collect`.
module SfMoe.Cli.SweepCommands

open System
open System.IO
open Argu
open SfMoe
open SfMoe.Runs.Sweeps
open SfMoe.Cli.Output
open SfMoe.Cli.Inputs
open SfMoe.Cli.SweepArgs

/// `sfmoe sweep ... -- TRAIN OPTIONS`: the words after the first "--" are extra `sfmoe train` options for every job.
let splitTrainArgs (argv: string[]) =
    if argv.Length > 0 && argv[0] = "sweep" then
        match Array.tryFindIndex ((=) "--") argv with
        | Some i -> argv[.. i - 1], argv[i + 1 ..]
        | None -> argv, [||]
    else argv, [||]

/// The command that runs this sfmoe: --sfmoe, else SFMOE_EXE, else this process (`dotnet SfMoe.Cli.dll` or the apphost).
let selfCommand (given: string option) : string[] =
    let split (s: string) = s.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries)
    let cmd =
        match given |> Option.orElse (Environment.GetEnvironmentVariable "SFMOE_EXE" |> Option.ofObj |> Option.filter ((<>) "")) with
        | Some s -> split s
        | None ->
            let exe = Environment.ProcessPath
            if Path.GetFileNameWithoutExtension exe = "dotnet" then
                [| exe; Reflection.Assembly.GetEntryAssembly().Location |]
            else [| exe |]
    if cmd.Length = 0 then fail "--sfmoe is empty"
    if Path.IsPathRooted cmd[0] && not (File.Exists cmd[0]) then fail "the sfmoe command %s does not exist" cmd[0]
    cmd

/// How sweep jobs run `sfmoe train`: the command's name from the top-level schema, the flags from TrainFlags.fs.
let commandLine =
    let train = ArgumentParser.Create<Commands.Command>().GetArgumentCaseInfo(<@ Commands.Train @>)
    TrainFlags.TrainCommandLine([ ApiNames.flagOf train ], TrainFlags.flags)

/// Checks extra train options with `sfmoe train`'s own parser, so a typo fails here rather than in every job, and
/// refuses those the sweep sets itself.
let private validateTrainArgs (extra: string[]) =
    if extra.Length > 0 then
        try TrainFlags.parser.ParseCommandLine(extra, ignoreMissing = true, raiseOnUsage = true) |> ignore
        with :? ArguParseException as e ->
            fail "extra train options (after --): %s" ((e.Message.Split('\n') |> Array.head).Replace("ERROR: ", ""))
        TrainFlags.refuseSweepSet TrainFlags.flags extra
        SweepDefinition.ParseTrainArgs extra |> ignore

let private definitionOf (a: ParseResults<LaunchArgs>) (extra: string[]) =
    let given =
        extra.Length > 0
        || [ a.Contains LaunchArgs.Datasets; a.Contains LaunchArgs.Algorithms; a.Contains LaunchArgs.Test_Envs; a.Contains LaunchArgs.Single_Test_Envs
             a.Contains LaunchArgs.N_Hparams_From; a.Contains LaunchArgs.N_Hparams; a.Contains LaunchArgs.N_Trials; a.Contains LaunchArgs.Data_Dir ]
           |> List.exists id
    validateTrainArgs extra
    let d =
        SweepDefinition(
            Datasets = (a.GetResult(LaunchArgs.Datasets, defaultValue = [ "Synthetic" ]) |> Array.ofList),
            Algorithms = (a.GetResult(LaunchArgs.Algorithms, defaultValue = [ "SFMoE" ]) |> Array.ofList),
            TestEnvs = (match a.TryGetResult LaunchArgs.Test_Envs with
                        | Some l -> Array.ofList l :> Collections.Generic.IReadOnlyList<int>
                        | None -> null),
            SingleTestEnvs = a.Contains LaunchArgs.Single_Test_Envs,
            HparamsFrom = a.GetResult(LaunchArgs.N_Hparams_From, defaultValue = 0),
            HparamsTo = a.GetResult(LaunchArgs.N_Hparams, defaultValue = 20),
            Trials = a.GetResult(LaunchArgs.N_Trials, defaultValue = 3),
            DataDir = (a.TryGetResult LaunchArgs.Data_Dir |> Option.map Path.GetFullPath |> Option.toObj),
            TrainArgs = extra)
    d, given

/// The sweep in DIR: sweep.json when present (a definition given on the command line must equal it), else a new one.
let private openSweep (dir: string) (def: SweepDefinition) (given: bool) =
    if SweepManifest.Exists dir then
        let m = SweepManifest.Load(dir, commandLine)
        if given && not (m.Definition.SameAs def) then
            fail "%s defines another sweep (%s); leave out the sweep options (and the train options after --) to relaunch it, or use another --output-dir"
                (Path.Combine(dir, SweepManifest.FileName)) (m.Definition.ToJson().ToJsonString())
        m, false
    else SweepManifest.Create(dir, def, commandLine), true

let private load (dir: string) =
    if not (Directory.Exists dir) then fail "--output-dir %s: folder not found" dir
    SweepManifest.Load(dir, commandLine)

let private slurmClient () = SlurmClient()

let private shortIds (jobs: SweepJob seq) =
    let ids = jobs |> Seq.map (fun j -> j.Id) |> Seq.toArray
    let rec width w =
        if w >= 32 || (ids |> Array.map (fun (s: string) -> s[.. w - 1]) |> Array.distinct).Length = ids.Length then w else width (w + 4)
    let w = width 8
    fun (j: SweepJob) -> j.Id[.. w - 1]

let private scheduler (s: JobStatus) = match s.SchedulerText with null -> "-" | t -> t

/// The status table, DomainBed's summary line, the jobs that did not finish and the scheduler's notes.
let private printStatus (st: SweepStatus) =
    let short = shortIds (st.Jobs |> Seq.map (fun j -> j.Job))
    Console.WriteLine(sprintf "sweep %s" st.Sweep.Directory)
    table Console.Out
        [ yield [ "job"; "state"; "slurm"; "dataset"; "algorithm"; "test envs"; "hparams"; "trial"; "progress" ]
          for s in st.Jobs ->
              [ short s.Job; JobStatus.Name s.State; scheduler s; s.Job.Dataset; s.Job.Algorithm
                String.Join(",", s.Job.TestEnvs); string s.Job.HparamsSeed; string s.Job.TrialSeed; s.Progress ] ]
    Console.WriteLine(st.Summary)
    if st.LocalLaunchRunning then Console.WriteLine "A local launch of this sweep is running."
    for s in st.Jobs do
        if s.State = JobState.Incomplete && not s.Active then
            let why = [ Option.ofObj s.SchedulerText |> Option.map (fun t -> "Slurm " + t); Option.ofObj s.LastError ] |> List.choose id
            Console.WriteLine(
                sprintf "incomplete: %s %s: %s%s%s" s.Job.Id (s.Job.Describe()) s.Progress
                    (if why.IsEmpty then "" else "; " + String.Join("; ", why))
                    (match s.Log with null -> "" | l -> sprintf " (log: %s)" l))
    for n in st.Notes do Console.WriteLine("note: " + n)

type JobJson =
    { id: string; dir: string; state: string; resumable: bool; records: int; last_step: Nullable<int64>; steps: Nullable<int64>
      slurm_state: string; slurm_reason: string; slurm_task: string; log: string; error: string
      dataset: string; algorithm: string; test_envs: int seq; hparams_seed: int; trial_seed: int; seed: int }

let private statusJson (st: SweepStatus) =
    {| sweep = st.Sweep.Directory
       total = st.Jobs.Count
       ``done`` = st.Count JobState.Done
       incomplete = st.Count JobState.Incomplete
       not_launched = st.Count JobState.NotLaunched
       local_launch_running = st.LocalLaunchRunning
       notes = st.Notes
       jobs =
        [ for s in st.Jobs ->
              let t = s.Scheduler
              { id = s.Job.Id; dir = st.Sweep.JobDirectory s.Job; state = JobStatus.Name s.State; resumable = s.Resumable; records = s.Records
                last_step = Option.toNullable (Option.ofNullable s.LastStep); steps = s.Job.Steps
                slurm_state = (if isNull t then null else t.State); slurm_reason = (if isNull t then null else t.Reason)
                slurm_task = s.SlurmTask
                log = s.Log; error = s.LastError; dataset = s.Job.Dataset; algorithm = s.Job.Algorithm; test_envs = s.Job.TestEnvs
                hparams_seed = s.Job.HparamsSeed; trial_seed = s.Job.TrialSeed; seed = s.Job.Seed } ] |}

let private waitFor (m: SweepManifest) (timeout: int option) (poll: float) =
    if poll <= 0.0 then fail "--poll must be > 0, got %g" poll
    use cts = new Threading.CancellationTokenSource()
    Console.CancelKeyPress.Add(fun e -> e.Cancel <- true; cts.Cancel())
    let st, finished =
        Sweep.Wait(m, slurmClient (), timeout |> Option.map (fun s -> TimeSpan.FromSeconds(float (positive "timeout" s))) |> Option.toNullable,
                   TimeSpan.FromSeconds poll, (fun line -> Console.WriteLine line), cts.Token).ToTuple()
    printStatus st
    if not finished then
        eprintfn "sfmoe: error: timed out after %d s with jobs still queued or running" timeout.Value
        1
    elif st.Count JobState.Done = st.Jobs.Count then 0
    else 1

/// The header of the batch scripts says what wrote them.
let private writtenBy = "`sfmoe sweep launch --launcher slurm`"

let launch (a: ParseResults<LaunchArgs>) (extra: string[]) =
    let dir = Path.GetFullPath(a.GetResult LaunchArgs.Output_Dir)
    let def, given = definitionOf a extra
    let m, isNew = openSweep dir def given
    let launcher = a.GetResult(LaunchArgs.Launcher, defaultValue = "local").ToLowerInvariant()
    if not (List.contains launcher [ "local"; "parallel"; "slurm" ]) then fail "--launcher must be local, parallel or slurm, got %s" launcher
    let dryRun = a.Contains LaunchArgs.Dry_Run
    let slurmOnly =
        function
        | LaunchArgs.Partition _ -> Some "partition"
        | LaunchArgs.Time _ -> Some "time"
        | LaunchArgs.Cpus_Per_Task _ -> Some "cpus-per-task"
        | LaunchArgs.Gpus _ -> Some "gpus"
        | LaunchArgs.Mem _ -> Some "mem"
        | LaunchArgs.Max_Concurrent _ -> Some "max-concurrent"
        | LaunchArgs.Job_Name _ -> Some "job-name"
        | LaunchArgs.Sbatch _ -> Some "sbatch"
        | LaunchArgs.Max_Array_Size _ -> Some "max-array-size"
        | LaunchArgs.Wait -> Some "wait"
        | LaunchArgs.Timeout _ -> Some "timeout"
        | LaunchArgs.Poll _ -> Some "poll"
        | _ -> None
    if launcher <> "slurm" then
        for r in a.GetAllResults() do
            match slurmOnly r with
            | Some name -> fail "--%s applies to --launcher slurm" name
            | None -> ()
    if launcher <> "parallel" && a.Contains LaunchArgs.Jobs then fail "--jobs applies to --launcher parallel"
    if launcher <> "parallel" && a.Contains LaunchArgs.Gpus_Per_Job then fail "--gpus-per-job applies to --launcher parallel"
    let sfmoe = selfCommand (a.TryGetResult LaunchArgs.Sfmoe)
    let cores = Environment.ProcessorCount
    let threadsFlag, workersFlag = TrainFlags.launchFlag TrainFlags.flags TrainFlags.TensorThreads, TrainFlags.launchFlag TrainFlags.flags TrainFlags.DataWorkers
    // GPUs: the parallel launcher's --gpus-per-job (checked against this machine's GPUs before anything starts) or
    // Slurm's --gpus. Such jobs train on `cuda` unless the sweep's train options set a device.
    let gpuPerJob = a.TryGetResult LaunchArgs.Gpus_Per_Job |> Option.map (positive "gpus-per-job")
    let gpuInventory, gpuGroups =
        match gpuPerJob with
        | Some n when launcher = "parallel" ->
            let inv = GpuInventory.Detect()
            Some inv, Some(inv.Groups n)
        | _ -> None, None
    let onGpus = gpuGroups.IsSome || (launcher = "slurm" && a.Contains LaunchArgs.Gpus)
    let deviceFlag = ApiNames.flagOf (TrainFlags.parser.GetArgumentCaseInfo <@ TrainFlags.TrainArgs.Device @>)
    let jobsSetDevice = m.Jobs |> Seq.exists (fun j -> j.TrainArgs.ContainsKey(TrainFlags.extraKey deviceFlag))
    let deviceArgs = if onGpus && not jobsSetDevice then [| deviceFlag; "cuda" |] else [||]
    let threadsArgs (t: int) =
        let defaultWorkers = if onGpus then max 1 (t - 1) else max 1 (t / 2)
        let w = a.TryGetResult LaunchArgs.Workers |> Option.map (positive "workers") |> Option.defaultValue defaultWorkers
        [| threadsFlag; string t; workersFlag; string w; yield! deviceArgs |]
    let nParallel =
        let given = a.TryGetResult LaunchArgs.Jobs |> Option.map (positive "jobs")
        match gpuGroups with
        | Some g -> min g.Count (given |> Option.defaultValue g.Count)
        | None -> given |> Option.defaultValue cores
    let threads = a.TryGetResult LaunchArgs.Threads |> Option.map (positive "threads")
    let slurmOpts =
        SlurmOptions(
            Partition = (a.TryGetResult LaunchArgs.Partition |> Option.toObj),
            Time = (a.TryGetResult LaunchArgs.Time |> Option.toObj),
            CpusPerTask = (a.TryGetResult LaunchArgs.Cpus_Per_Task |> Option.map (positive "cpus-per-task") |> Option.toNullable),
            Gpus = (a.TryGetResult LaunchArgs.Gpus |> Option.toObj),
            Mem = (a.TryGetResult LaunchArgs.Mem |> Option.toObj),
            MaxConcurrent = (a.TryGetResult LaunchArgs.Max_Concurrent |> Option.map (positive "max-concurrent") |> Option.toNullable),
            JobName = (a.TryGetResult LaunchArgs.Job_Name |> Option.toObj),
            ExtraLines = (a.GetResults LaunchArgs.Sbatch
                          |> List.map (fun l -> let l = l.Trim() in if l.StartsWith "#" || l.StartsWith "-" then l else "--" + l)
                          |> Array.ofList),
            MaxArraySize = positive "max-array-size" (a.GetResult(LaunchArgs.Max_Array_Size, defaultValue = 1000)),
            WrittenBy = writtenBy)
    let launchArgs =
        match launcher with
        | "parallel" -> threadsArgs (threads |> Option.defaultValue (LocalLauncher.ThreadsPerJob(cores, nParallel)))
        | "slurm" -> threadsArgs (threads |> Option.defaultValue slurmOpts.EffectiveCpusPerTask)
        | _ ->
            [| match threads with Some t -> yield! [ threadsFlag; string t ] | None -> ()
               match a.TryGetResult LaunchArgs.Workers with Some w -> yield! [ workersFlag; string (positive "workers" w) ] | None -> () |]
    let client = slurmClient ()
    let askSlurm = launcher = "slurm" || m.Launches |> Seq.exists (fun l -> not (isNull l.SlurmJobId))
    let st = Sweep.Status(m, (if askSlurm then client else null))
    let jobs = Sweep.JobsToLaunch st
    let active = st.Jobs |> Seq.filter (fun j -> j.Active) |> Seq.length
    let resumed = jobs |> Seq.filter m.IsResumable |> Seq.length
    let out = if dryRun && launcher = "slurm" then Console.Error else Console.Out
    out.WriteLine(sprintf "sweep %s%s" dir (if isNew then " (new)" else ""))
    out.WriteLine(st.Summary + (if active > 0 then sprintf " %d queued or running in Slurm." active else ""))
    for n in st.Notes do out.WriteLine("note: " + n)
    if jobs.Count = 0 then
        out.WriteLine "Nothing to launch."
        if isNew && not dryRun then m.Save()
        0
    else
        out.WriteLine(sprintf "%s %d jobs%s with the %s launcher." (if dryRun then "Would launch" else "Launching") jobs.Count
                        (if resumed > 0 then sprintf " (%d resuming)" resumed else "") launcher)
        match gpuInventory, gpuGroups with
        | Some inv, Some g ->
            out.WriteLine(sprintf "GPUs (%s): %d jobs at once, each with CUDA_VISIBLE_DEVICES set to its own: %s." inv.Source nParallel
                            (String.Join(" | ", g |> Seq.truncate nParallel)))
        | _ -> ()
        if dryRun then
            match launcher with
            | "slurm" ->
                for _, script in SlurmLauncher.Scripts(m, jobs, sfmoe, launchArgs, slurmOpts) do Console.Write script
            | _ ->
                for j in jobs do
                    let cmd = LocalLauncher.CommandOf(m, j, sfmoe, launchArgs, m.IsResumable j)
                    Console.WriteLine(String.Join(" ", cmd |> Seq.map SlurmScript.Quote))
            0
        else
            m.Save()
            match launcher with
            | "slurm" ->
                SlurmLauncher.Submit(m, jobs, sfmoe, launchArgs, slurmOpts, client, (fun l -> Console.WriteLine l)) |> ignore
                if a.Contains LaunchArgs.Wait then
                    waitFor m (a.TryGetResult LaunchArgs.Timeout) (a.GetResult(LaunchArgs.Poll, defaultValue = 5.0))
                else
                    Console.WriteLine(sprintf "sfmoe sweep status --output-dir %s shows their progress." (SlurmScript.Quote dir))
                    0
            | _ ->
                use cts = new Threading.CancellationTokenSource()
                Console.CancelKeyPress.Add(fun e -> e.Cancel <- true; cts.Cancel())
                let l = LocalLauncher(Parallel = (if launcher = "parallel" then nParallel else 1), LaunchArgs = launchArgs,
                                      GpusPerJob = (gpuPerJob |> Option.defaultValue 0),
                                      Gpus = (match gpuInventory with Some inv -> inv.Ids | None -> null),
                                      Report = (fun line -> lock Console.Out (fun () -> Console.WriteLine line)))
                let r = l.Run(m, jobs, sfmoe, cts.Token)
                let failed = r.Failed
                Console.WriteLine(sprintf "Launched %d jobs: %d succeeded, %d failed%s." r.Outcomes.Count (r.Outcomes.Count - failed.Count) failed.Count
                                    (if r.NotStarted.Count > 0 then sprintf ", %d not started (interrupted)" r.NotStarted.Count else ""))
                for f in failed do
                    Console.WriteLine(sprintf "failed: %s %s: exit code %d: %s" f.Job.Id (f.Job.Describe()) f.ExitCode f.Error)
                if failed.Count > 0 || r.NotStarted.Count > 0 then 1 else 0

let status (a: ParseResults<StatusArgs>) =
    let m = load (a.GetResult StatusArgs.Output_Dir)
    let st = Sweep.Status(m, slurmClient ())
    if a.Contains StatusArgs.Json then Console.WriteLine(json (statusJson st)) else printStatus st
    0

let wait (a: ParseResults<WaitArgs>) =
    let m = load (a.GetResult WaitArgs.Output_Dir)
    waitFor m (a.TryGetResult WaitArgs.Timeout) (a.GetResult(WaitArgs.Poll, defaultValue = 5.0))

let deleteIncomplete (a: ParseResults<DeleteArgs>) =
    let m = load (a.GetResult DeleteArgs.Output_Dir)
    let st = Sweep.Status(m, slurmClient ())
    let doomed = Sweep.IncompleteToDelete st
    Console.WriteLine st.Summary
    let active = st.Jobs |> Seq.filter (fun j -> j.Active && j.State = JobState.Incomplete) |> Seq.length
    if active > 0 then Console.WriteLine(sprintf "%d incomplete jobs are queued or running in Slurm and are kept." active)
    for j in doomed do Console.WriteLine(sprintf "incomplete: %s %s: %s" (m.JobDirectory j.Job) (j.Job.Describe()) j.Progress)
    if doomed.Count = 0 then
        Console.WriteLine "Nothing to delete."
        0
    elif a.Contains DeleteArgs.Dry_Run then
        Console.WriteLine(sprintf "Would delete %d job folders." doomed.Count)
        0
    else
        let confirmed =
            a.Contains DeleteArgs.Yes
            || (if Console.IsInputRedirected then fail "pass --yes to delete %d job folders without a terminal to confirm on" doomed.Count
                else
                    Console.Write(sprintf "Delete %d job folders? (y/n) " doomed.Count)
                    let r = Console.ReadLine()
                    not (isNull r) && r.Trim().ToLowerInvariant().StartsWith "y")
        if confirmed then
            let n = Sweep.DeleteIncomplete(m, doomed)
            Console.WriteLine(sprintf "Deleted %d job folders." n)
        else Console.WriteLine "Nothing deleted."
        0

let sweep (a: ParseResults<SweepArgs>) (extra: string[]) =
    match a.TryGetSubCommand() with
    | Some(SweepArgs.Launch l) -> launch l extra
    | _ when extra.Length > 0 -> fail "train options after -- apply to sweep launch"
    | Some(SweepArgs.Status s) -> status s
    | Some(SweepArgs.Wait w) -> wait w
    | Some(SweepArgs.Delete_Incomplete d) -> deleteIncomplete d
    | None -> fail "sweep needs a command: launch, status, wait or delete-incomplete (see 'sfmoe sweep --help')"

/// The jobs of a sweep that are not done, for `sfmoe collect` on a sweep folder: failed and killed jobs are listed
/// (with Slurm's state and the last error of their log), not silently left out of the tables.
let sweepReport (dir: string) =
    let st = Sweep.Status(SweepManifest.Load(dir, commandLine), slurmClient ())
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
let collect (a: ParseResults<CollectCommands.CollectArgs>) =
    let dir = a.GetResult CollectCommands.CollectArgs.Input_Dir
    let format = a.GetResult(CollectCommands.CollectArgs.Format, defaultValue = "markdown").Trim().ToLowerInvariant()
    let report (toStderr: bool) =
        if Directory.Exists dir && SweepManifest.Exists dir then
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
        try CollectCommands.collect a
        with _ ->
            (try report true with _ -> ())
            reraise ()
    report (format = "csv" || format = "json")
    code
