/// The CLI's train flags against their one declaration (src-fs/SfMoe.Cli/TrainFlags.fs): sweep job command lines parse
/// back into the jobs' values, a renamed flag reaches the sweep, every TrainOptions member is accounted for and set by
/// the flag that claims it, and library messages come out in the CLI's words.
module SfMoe.Core.Tests.CliFlagTests

open System
open System.Globalization
open System.IO
open Microsoft.FSharp.Reflection
open Expecto
open Argu
open SfMoe
open SfMoe.Runs
open SfMoe.Runs.Sweeps
open SfMoe.Cli
open SfMoe.Cli.TrainFlags

/// A train schema whose flags differ from sfmoe's (as if someone renamed them with CustomCommandLine).
type RenamedArgs =
    | Dataset of name: string
    | Data_Dir of dir: string
    | [<CustomCommandLine("--held-out")>] Test_Env of index: int
    | Algorithm of name: string
    | [<CustomCommandLine("--run-seed")>] Seed of n: int
    | Trial_Seed of n: int
    | Hparams_Seed of n: int
    | [<CustomCommandLine("--run-dir")>] Output_Dir of dir: string
    | [<CustomCommandLine("--continue")>] Resume
    | Threads of n: int
    | Workers of n: int
    | [<CustomCommandLine("--num-steps")>] Steps of n: int
    interface IArgParserTemplate with
        member _.Usage = "test"

let private renamedParser = ArgumentParser.Create<RenamedArgs>()

let private renamedFlags =
    let d = Declare renamedParser
    [ d.Flag(<@ RenamedArgs.Dataset @>, <@ fun o -> o.Dataset @>, JobKey "dataset")
      d.Flag(<@ RenamedArgs.Data_Dir @>, <@ fun o -> o.DataDir @>, JobKey "data_dir")
      d.Flag(<@ RenamedArgs.Test_Env @>, <@ fun o -> o.TestEnvs @>, JobKey "test_envs")
      d.Flag(<@ RenamedArgs.Algorithm @>, <@ fun o -> o.Algorithm @>, JobKey "algorithm")
      d.Flag(<@ RenamedArgs.Seed @>, <@ fun o -> o.Seed @>, JobKey "seed")
      d.Flag(<@ RenamedArgs.Trial_Seed @>, <@ fun o -> o.TrialSeed @>, JobKey "trial_seed")
      d.Flag(<@ RenamedArgs.Hparams_Seed @>, <@ fun o -> o.HparamsSeed @>, JobKey "hparams_seed")
      d.Flag(<@ RenamedArgs.Output_Dir @>, <@ fun o -> o.OutputDir @>, Launch RunFolder)
      d.Switch(RenamedArgs.Resume, <@ fun o -> o.Resume @>, Launch ResumeRun)
      d.Flag(<@ RenamedArgs.Threads @>, <@ fun o -> o.Threads @>, Launch TensorThreads)
      d.Flag(<@ RenamedArgs.Workers @>, <@ fun o -> o.Workers @>, Launch DataWorkers)
      d.Flag(<@ RenamedArgs.Steps @>, <@ fun o -> o.Steps @>, Extra) ]

let private usageError (f: unit -> 'a) =
    try
        f () |> ignore
        failtest "expected a usage error"
    with Output.UsageError m -> m

/// Jobs with every kind of value: a data folder, pairs of test environments, integer, string and switch extras.
let private jobs (extra: string list) =
    SweepDefinition(Datasets = [| "Synthetic"; "PACS" |], Algorithms = [| "ERM"; "GMoE" |], HparamsTo = 2, Trials = 1,
                    DataDir = "/data/domain bed", TrainArgs = Array.ofList extra)
        .Expand(fun _ -> 4)

let private sfmoeExtras =
    [ "--steps"; "30"; "--quiet"; "--lr"; "1e-4"; "--model"; "sfmoe_test_patch8_32"; "--pattern"; "[S,F]x2"; "--no-timings" ]

/// The values of a union case's fields in parse results (one array per occurrence).
let private valuesOf (results: ParseResults<'T>) (f: Flag) =
    [ for r in results.GetAllResults() do
          let case, fields = FSharpValue.GetUnionFields(box r, typeof<'T>)
          if case.Tag = f.Case.UnionCaseInfo.Tag then yield fields ]

/// A job's value as the flag's field type reads it ("1e-4" -> 0.0001, 30L -> 30).
let private asField (field: obj) (v: obj) = Convert.ChangeType(Convert.ToString(v, CultureInfo.InvariantCulture), field.GetType(), CultureInfo.InvariantCulture)

/// Every job key's flag parses back, with the declaration's parser, into the job's value; launch flags too.
let private roundTrip (parser: ArgumentParser<'T>) (flags: Flag list) (job: SweepJob) (m: SweepManifest) =
    let cl = m.CommandLine
    let words = m.TrainArguments(job, [| launchFlag flags TensorThreads; "3"; launchFlag flags DataWorkers; "1" |], resume = true)
    let results = parser.ParseCommandLine(Array.ofSeq words)
    for KeyValue(k, v) in job.TrainArgs do
        let f = flags |> List.find (fun f -> f.Sweep = JobKey k || (f.Sweep = Extra && extraKey f.Name = k))
        let got = valuesOf results f
        match v with
        | :? (int[]) as envs -> Expect.equal [ for fs in got -> fs[0] :?> int ] (List.ofArray envs) (sprintf "%s: %s" job.Id k)
        | :? bool -> Expect.equal got [ [||] ] (sprintf "%s: switch %s given once" job.Id k)
        | v ->
            Expect.equal got.Length 1 (sprintf "%s: %s given once" job.Id k)
            Expect.equal got.[0].[0] (asField got.[0].[0] v) (sprintf "%s: %s" job.Id k)
    let launch s = valuesOf results (flags |> List.find (fun f -> f.Sweep = Launch s))
    Expect.equal (launch RunFolder) [ [| box (m.JobDirectory job) |] ] "the job's folder"
    Expect.equal (launch ResumeRun) [ [||] ] "resume"
    Expect.equal (launch TensorThreads) [ [| box 3 |] ] "threads"
    Expect.equal (launch DataWorkers) [ [| box 1 |] ] "workers"
    Expect.equal cl.OutputDirFlag (launchFlag flags RunFolder) "OutputDirFlag"
    Expect.equal cl.ResumeFlag (launchFlag flags ResumeRun) "ResumeFlag"

let private manifest (cl: ITrainCommandLine) (extra: string list) =
    let dir = Path.Combine(Path.GetTempPath(), "sfmoe-flags-" + Guid.NewGuid().ToString("N"))
    SweepManifest.Create(dir, SweepDefinition(Datasets = [| "Synthetic" |], TestEnvs = [| 1 |], HparamsTo = 1, Trials = 1,
                                              DataDir = "/d", TrainArgs = Array.ofList extra), cl, (fun _ -> 4))

/// A TrainOptions member's value, comparable ("logger: info" for the console logger's level).
let private render (v: obj) =
    match v with
    | null -> "null"
    | :? Microsoft.Extensions.Logging.ILogger as l -> sprintf "logger: info %b" (l.IsEnabled Microsoft.Extensions.Logging.LogLevel.Information)
    | :? string as s -> s
    | :? Collections.IEnumerable as xs -> String.Join(",", [ for x in xs -> string x ])
    | v -> string v

let private settable =
    typeof<TrainOptions>.GetProperties(Reflection.BindingFlags.Public ||| Reflection.BindingFlags.Instance)
    |> Array.filter (fun p -> p.CanWrite && p.SetMethod.IsPublic)

let private snapshot (o: TrainOptions) = Map [ for p in settable -> p.Name, render (p.GetValue o) ]

[<Tests>]
let tests =
    testList "cli flags" [
        test "the declaration lists every case of the train schema once" {
            let declared = flags |> List.map (fun f -> f.Case.UnionCaseInfo.Tag) |> List.sort
            Expect.equal declared [ for c in parser.GetArgumentCases() -> c.UnionCaseInfo.Tag ] "each TrainArgs case once"
        }

        test "every settable TrainOptions property is set by a declared flag or listed as API-only" {
            let byFlags = flags |> List.map (fun f -> f.Member.Name)
            let apiOnly = apiOnly |> List.map (fun p -> p.Name)
            Expect.equal (List.distinct byFlags) byFlags "no member claimed by two flags"
            Expect.isEmpty (Set.intersect (set byFlags) (set apiOnly)) "API-only members are set by no flag"
            Expect.equal (set (byFlags @ apiOnly)) (set [ for p in settable -> p.Name ]) "every settable member accounted for"
        }

        test "each flag sets exactly the TrainOptions member it declares" {
            let config = Path.GetTempFileName()
            File.WriteAllText(config, "{\"model\": \"sfmoe_test_patch8_32\"}")
            try
                let baseArgs = [ launchFlag flags RunFolder; "base" ]
                let options (words: string list) = TrainCommands.options (parser.ParseCommandLine(Array.ofList words))
                let before = snapshot (options baseArgs)
                for f in flags do
                    let value =
                        match f.Case.UnionCaseInfo.GetFields() with
                        | [||] -> []
                        | fields ->
                            let t = f.Member.PropertyType
                            if fields[0].PropertyType = typeof<int> then [ "3" ]
                            elif fields[0].PropertyType = typeof<float> then [ "0.5" ]
                            elif t = typeof<Algorithm> then [ "ERM" ]
                            elif t = typeof<Optimizer> then [ "adamw" ]
                            elif t = typeof<Nullable<ExpertInit>> then [ "copy" ]
                            elif t = typeof<Nullable<Precision>> then [ "bf16" ]
                            elif f.Member.Name = "ModelConfigJson" then [ config ]
                            else [ "x" ]
                    let after = snapshot (options (baseArgs @ (f.Name :: value)))
                    let changed = [ for KeyValue(k, v) in after do if before[k] <> v then yield k ]
                    Expect.equal changed [ f.Member.Name ] (sprintf "%s %s changes only %s" f.Name (String.Join(" ", value)) f.Member.Name)
            finally
                File.Delete config
        }

        test "a sweep job's command line parses back into the job's values, for every job key" {
            let m = manifest SweepCommands.commandLine sfmoeExtras
            for job in jobs sfmoeExtras do
                roundTrip parser flags job m
            let declaredKeys = set [ for f in flags do match f.Sweep with JobKey k -> yield k | _ -> () ]
            Expect.equal (set (jobs []).[0].TrainArgs.Keys) declaredKeys "the keys a sweep sets per job are the declared ones"
        }

        test "the sweep emits exactly the flags Argu reports" {
            let names = set [ for c in parser.GetArgumentCases() -> c.Name.Value ]
            let m = manifest SweepCommands.commandLine sfmoeExtras
            let job = m.Jobs[0]
            let words = LocalLauncher.CommandOf(m, job, [| "sfmoe" |], [| launchFlag flags TensorThreads; "2" |], true)
            Expect.equal (List.ofSeq words |> List.take 2) [ "sfmoe"; "train" ] "program and command"
            let emitted = words |> Seq.filter (fun w -> w.StartsWith "--") |> set
            Expect.isTrue (Set.isSubset emitted names) (sprintf "emitted %A, Argu knows %A" emitted names)
            for f in flags do
                Expect.equal f.Name f.Case.CommandLineNames.Value.Head "a flag is Argu's primary name"
        }

        test "a renamed flag reaches the sweep's command lines" {
            let cl = TrainCommandLine([ "train" ], renamedFlags)
            let m = manifest cl [ "--num-steps"; "30" ]
            let job = m.Jobs[0]
            let words = LocalLauncher.CommandOf(m, job, [| "sfmoe" |], [||], true) |> List.ofSeq
            for renamed in [ "--held-out"; "--run-seed"; "--run-dir"; "--continue"; "--num-steps" ] do
                Expect.contains words renamed (sprintf "emits %s" renamed)
            for old in [ "--test-env"; "--seed"; "--output-dir"; "--resume"; "--steps" ] do
                Expect.isFalse (List.contains old words) (sprintf "does not emit %s" old)
            roundTrip renamedParser renamedFlags job m
            // sfmoe's own parser refuses the renamed words: a mismatch fails loudly, it is not passed on silently
            Expect.throwsT<ArguParseException> (fun () -> parser.ParseCommandLine(Array.ofList words[2..]) |> ignore) "sfmoe train refuses --held-out"
            // a job key no declared flag takes (a sweep.json written with other flags) is an error, not a guess
            let stale = manifest cl [ "--quiet" ]
            Expect.stringContains (usageError (fun () -> (cl :> ITrainCommandLine).JobArguments stale.Jobs[0]))
                "no train flag takes its argument quiet" "stale key"
        }

        test "sweep-set options are refused as extra train options, derived from the declaration" {
            for reserved in [ "--seed"; "--test-env"; "--output-dir"; "--threads"; "--dataset"; "--resume" ] do
                Expect.stringContains (usageError (fun () -> refuseSweepSet flags [ reserved; "1" ])) (reserved + " is set by the sweep") reserved
            for f in flags do
                match f.Sweep with
                | Extra -> refuseSweepSet flags [ f.Name ]
                | _ -> Expect.stringContains (usageError (fun () -> refuseSweepSet flags [ f.Name ])) "set by the sweep for each job" f.Name
        }

        test "library messages come out in the CLI's words" {
            for f in flags do
                let token = ApiNames.tokenOf f.Member
                Expect.equal (ApiFlags.forUser (sprintf "%s: bad (see %s)" token token)) (sprintf "%s: bad (see %s)" f.Name f.Name) token
            Expect.equal (ApiFlags.forUser "TrainOptions.PretrainedFormat and TrainOptions.Pretrained") "--pretrained-format and --pretrained" "longest token wins"
            Expect.equal (ApiFlags.forUser "no data directory given: pass Datasets.Open(dataDir) or set SFMOE_DATA_DIR")
                "no data directory given: pass --data-dir or set SFMOE_DATA_DIR" "a parameter"
            Expect.equal (ApiFlags.forUser "run `Downloader.Fetch(\"PACS\", \"/d x\")` or point Datasets.Open(dataDir) at it")
                "run `sfmoe download PACS --data-dir /d x` or point --data-dir at it" "a suggested call"
            Expect.equal (ApiFlags.forUser "unknown model x; did you mean y? (the registry lists them all)")
                "unknown model x; did you mean y? ('sfmoe models' lists them all)" "a phrase"
            Expect.equal (ApiFlags.forUser "LocalLauncher.Parallel must be >= 1, got 0") "--jobs must be >= 1, got 0" "sweep launcher"
            Expect.equal (ApiFlags.forUser "not a sweep folder (create one with SweepManifest.Create)")
                "not a sweep folder (create one with sfmoe sweep launch)" "a command"
            Expect.equal (ApiFlags.forUser "ImportOptions.ModelConfigJson, AttentionReportOptions.Checkpoints, DatasetAnalysisOptions.Dataset")
                "--model-config, --checkpoint, --dataset" "import and analysis options"
            Expect.equal (ApiFlags.forUser "Foo.Bar and model.safetensors stay") "Foo.Bar and model.safetensors stay" "unknown words stay"
        }

        test "--precision and --deterministic reach TrainOptions; an unknown precision is an error naming it" {
            let options (words: string list) = TrainCommands.options (parser.ParseCommandLine(Array.ofList ([ launchFlag flags RunFolder; "x" ] @ words)))
            Expect.equal (options []).Precision (Nullable()) "unset: fp32 for a new run, the run's own on resume"
            for name, p in [ "fp32", Precision.Fp32; "tf32", Precision.Tf32; "bf16", Precision.Bf16; "BF16", Precision.Bf16 ] do
                Expect.equal (options [ "--precision"; name ]).Precision (Nullable p) name
            Expect.equal (usageError (fun () -> options [ "--precision"; "fp16" ])) "--precision must be fp32, tf32 or bf16, got fp16" "bad value"
            Expect.isFalse (options []).Deterministic "off by default"
            Expect.isTrue (options [ "--deterministic" ]).Deterministic "--deterministic"
            Expect.equal (ApiFlags.forUser "leave TrainOptions.Precision unset; TrainOptions.Deterministic") "leave --precision unset; --deterministic" "messages"
        }

        test "a resume into an empty folder names --resume" {
            let dir = Directory.CreateTempSubdirectory("sfmoe-resume-").FullName
            try
                let o = TrainCommands.options (parser.ParseCommandLine [| launchFlag flags RunFolder; dir; launchFlag flags ResumeRun |])
                let e = Expect.throwsC (fun () -> Trainer.Run o |> ignore) id
                let msg = ApiFlags.forUser e.Message
                Expect.equal msg
                    (sprintf "--resume: %s not found (nothing to resume; run without --resume)" (Path.Combine(dir, "train_state.safetensors")))
                    "the library's TrainOptions.Resume in the CLI's words"
            finally
                Directory.Delete(dir, true)
        }
    ]
