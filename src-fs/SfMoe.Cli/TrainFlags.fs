/// The train flags, declared once: the argument schema of `sfmoe train` and, for each of its cases, the TrainOptions
/// member it sets and what a sweep does with it. Flag names are Argu's (from the case names, or a CustomCommandLine
/// attribute) and are spelled nowhere else: the error messages' member -> flag table, the sweep's job command lines
/// (TrainCommandLine below, the host's ITrainCommandLine) and the check of a sweep's extra train options all read them
/// from here.
module SfMoe.Cli.TrainFlags

open System
open System.Globalization
open System.Reflection
open Microsoft.FSharp.Quotations
open Argu
open SfMoe.Runs
open SfMoe.Runs.Sweeps
open SfMoe.Cli.Output
open SfMoe.Cli.ApiNames

type TrainArgs =
    | Dataset of name: string
    | Data_Dir of dir: string
    | Test_Env of index: int
    | Algorithm of name: string
    | Model of name: string
    | Model_Config of file: string
    | Pattern of pattern: string
    | Steps of n: int
    | Checkpoint_Freq of n: int
    | Batch_Size of n: int
    | Lr of x: float
    | Weight_Decay of x: float
    | Optimizer of name: string
    | Seed of n: int
    | Trial_Seed of n: int
    | Hparams_Seed of n: int
    | Threads of n: int
    | Workers of n: int
    | Device of device: string
    | Precision of name: string
    | Deterministic
    | [<Mandatory>] Output_Dir of dir: string
    | Resume
    | Eval_Cache_Mb of mb: int
    | Train_Cache_Mb of mb: int
    | Synthetic_Size of n: int
    | Pretrained of file: string
    | Pretrained_Format of format: string
    | Experts of mode: string
    | No_Timings
    | Quiet
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Dataset _ -> "PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, SVIRO, CUB-DG, RotatedMNIST, ColoredMNIST, a folder in DomainBed's layout, or Synthetic (default: the built-in Synthetic dataset)"
            | Data_Dir _ -> "folder holding the datasets (DomainBed's --data_dir)"
            | Test_Env _ -> "held-out environment index (repeatable; default 0)"
            | Algorithm _ -> "ERM, SFMoE (default) or GMoE"
            | Model _ -> "registry model (sfmoe models) or resnet50 / mnist_cnn; default by algorithm and dataset"
            | Model_Config _ -> "model config JSON file instead of --model"
            | Pattern _ -> "block pattern or preset overriding the model's"
            | Steps _ -> "training steps (default: the dataset's, e.g. 5001)"
            | Checkpoint_Freq _ -> "evaluate and checkpoint every K steps (default: the dataset's, e.g. 300)"
            | Batch_Size _ -> "images per training environment per step (default: hparams registry)"
            | Lr _ -> "learning rate (default: hparams registry, the authors' per dataset)"
            | Weight_Decay _ -> "weight decay (default: hparams registry)"
            | Optimizer _ -> "adam (L2 weight decay, as the authors; default) or adamw"
            | Seed _ -> "seed of init, data order, augmentation and random choices (default 0)"
            | Trial_Seed _ -> "seed of the in/out splits (default 0)"
            | Hparams_Seed _ -> "seed of random hyperparameters (0: defaults)"
            | Threads _ -> "CPU threads for tensor ops (default: all cores)"
            | Workers _ -> "threads decoding and augmenting images (default: half the cores)"
            | Device _ -> "cpu (default), cuda or cuda:N"
            | Precision _ -> precisionUsage + "; on --resume, default: the run's"
            | Deterministic -> "libtorch's deterministic algorithms (on CUDA: no atomics in index_add/scatter_add or the gathers' backward; slower); on a CPU no result changes"
            | Output_Dir _ -> "run folder: results.jsonl, model.safetensors, train_state.safetensors, log.txt, done"
            | Resume -> "continue the run in --output-dir from its last checkpoint"
            | Eval_Cache_Mb _ -> "memory budget for evaluation images kept decoded and resized (default 2048)"
            | Train_Cache_Mb _ -> "memory budget for training images kept decoded (default 2048; 0 decodes at every use, as DomainBed)"
            | Synthetic_Size _ -> "images per environment of the Synthetic dataset"
            | Pretrained _ -> "initial weights (see sfmoe import): a checkpoint file"
            | Pretrained_Format _ -> "deit, timm, augreg, sfmoe-dg, gmoe or torchvision"
            | Experts _ -> "sparse blocks from a dense checkpoint: copy (GMoE) or random (SF-MoE as released; default for SF-MoE)"
            | No_Timings -> "write 0 for step_time and mem_gb, so results.jsonl is reproducible byte for byte"
            | Quiet -> "no progress output (warnings still go to stderr)"

/// A setting of a sweep's launch that every job gets (not part of the job's identity).
type LaunchSetting =
    /// The job's folder.
    | RunFolder
    /// Continue from the folder's training state.
    | ResumeRun
    /// Tensor threads of each job.
    | TensorThreads
    /// Data threads of each job.
    | DataWorkers

/// What a sweep does with a train flag.
type SweepUse =
    /// The sweep sets it per job from the job's DomainBed key (SweepJob.TrainArgs; part of the job's id).
    | JobKey of key: string
    /// The sweep sets it per launch.
    | Launch of LaunchSetting
    /// It may be an extra train option of a sweep (after `--`); its key is the flag's name by DomainBed's convention.
    | Extra

/// One train flag: Argu's metadata of the case (its name is the flag), the options member it sets, and its sweep use.
type Flag =
    { Case: ArgumentCaseInfo
      Member: PropertyInfo
      Sweep: SweepUse }

    /// "--output-dir".
    member f.Name = flagOf f.Case

/// Builds declarations over an Argu schema (the train schema here; tests build one over a schema of their own).
type Declare<'Args when 'Args :> IArgParserTemplate>(parser: ArgumentParser<'Args>) =
    /// A flag with a value: its case constructor, the member it sets, its sweep use.
    member _.Flag(case: Expr<'Field -> 'Args>, sets: Expr<TrainOptions -> 'Member>, sweep: SweepUse) =
        { Case = parser.GetArgumentCaseInfo case; Member = propertyOf sets; Sweep = sweep }
    /// A switch (a case without a value).
    member _.Switch(case: 'Args, sets: Expr<TrainOptions -> 'Member>, sweep: SweepUse) =
        { Case = parser.GetArgumentCaseInfo case; Member = propertyOf sets; Sweep = sweep }

/// The parser of `sfmoe train`'s arguments.
let parser = ArgumentParser.Create<TrainArgs>(programName = "sfmoe train")

/// Every train flag. A test checks that each TrainArgs case is here once and each settable TrainOptions property is
/// set by a flag or listed in `apiOnly`.
let flags : Flag list =
    let d = Declare parser
    [ d.Flag(<@ Dataset @>, <@ fun o -> o.Dataset @>, JobKey "dataset")
      d.Flag(<@ Data_Dir @>, <@ fun o -> o.DataDir @>, JobKey "data_dir")
      d.Flag(<@ Test_Env @>, <@ fun o -> o.TestEnvs @>, JobKey "test_envs")
      d.Flag(<@ Algorithm @>, <@ fun o -> o.Algorithm @>, JobKey "algorithm")
      d.Flag(<@ Model @>, <@ fun o -> o.Model @>, Extra)
      d.Flag(<@ Model_Config @>, <@ fun o -> o.ModelConfigJson @>, Extra)
      d.Flag(<@ Pattern @>, <@ fun o -> o.Pattern @>, Extra)
      d.Flag(<@ Steps @>, <@ fun o -> o.Steps @>, Extra)
      d.Flag(<@ Checkpoint_Freq @>, <@ fun o -> o.CheckpointFreq @>, Extra)
      d.Flag(<@ Batch_Size @>, <@ fun o -> o.BatchSize @>, Extra)
      d.Flag(<@ Lr @>, <@ fun o -> o.Lr @>, Extra)
      d.Flag(<@ Weight_Decay @>, <@ fun o -> o.WeightDecay @>, Extra)
      d.Flag(<@ Optimizer @>, <@ fun o -> o.Optimizer @>, Extra)
      d.Flag(<@ Seed @>, <@ fun o -> o.Seed @>, JobKey "seed")
      d.Flag(<@ Trial_Seed @>, <@ fun o -> o.TrialSeed @>, JobKey "trial_seed")
      d.Flag(<@ Hparams_Seed @>, <@ fun o -> o.HparamsSeed @>, JobKey "hparams_seed")
      d.Flag(<@ Threads @>, <@ fun o -> o.Threads @>, Launch TensorThreads)
      d.Flag(<@ Workers @>, <@ fun o -> o.Workers @>, Launch DataWorkers)
      d.Flag(<@ Device @>, <@ fun o -> o.Device @>, Extra)
      d.Flag(<@ Precision @>, <@ fun o -> o.Precision @>, Extra)
      d.Switch(Deterministic, <@ fun o -> o.Deterministic @>, Extra)
      d.Flag(<@ Output_Dir @>, <@ fun o -> o.OutputDir @>, Launch RunFolder)
      d.Switch(Resume, <@ fun o -> o.Resume @>, Launch ResumeRun)
      d.Flag(<@ Eval_Cache_Mb @>, <@ fun o -> o.EvalCacheBytes @>, Extra)
      d.Flag(<@ Train_Cache_Mb @>, <@ fun o -> o.TrainCacheBytes @>, Extra)
      d.Flag(<@ Synthetic_Size @>, <@ fun o -> o.SyntheticSize @>, Extra)
      d.Flag(<@ Pretrained @>, <@ fun o -> o.Pretrained @>, Extra)
      d.Flag(<@ Pretrained_Format @>, <@ fun o -> o.PretrainedFormat @>, Extra)
      d.Flag(<@ Experts @>, <@ fun o -> o.Experts @>, Extra)
      d.Switch(No_Timings, <@ fun o -> o.RecordTimings @>, Extra)
      d.Switch(Quiet, <@ fun o -> o.Logger @>, Extra) ]

/// TrainOptions members no flag sets: objects only a program can pass, and settings the CLI keeps at their default.
let apiOnly : PropertyInfo list =
    [ propertyOf <@ fun (o: TrainOptions) -> o.DatasetInstance @>
      propertyOf <@ fun (o: TrainOptions) -> o.Preprocessor @>
      propertyOf <@ fun (o: TrainOptions) -> o.HoldoutFraction @> ]

/// "TrainOptions.Resume" -> "--resume", for error messages.
let renames : Rename list = [ for f in flags -> { Api = tokenOf f.Member; Cli = f.Name } ]

/// The flag a sweep sets per launch for a setting.
let launchFlag (flags: Flag list) (s: LaunchSetting) =
    flags |> List.pick (fun f -> if f.Sweep = Launch s then Some f.Name else None)

/// The job key of an extra train option, by the host's reading of extra options (DomainBed's convention).
let extraKey (flag: string) = (SweepDefinition.ParseTrainArgs [| flag |]).[0].Key

/// A sweep's job command lines from a flag declaration: each of the job's keys (SweepJob.TrainArgs, sorted as in
/// DomainBed's command strings) becomes its declared flag; a key no flag declares is an error, not a guess.
type TrainCommandLine(command: string list, flags: Flag list) =
    let byKey =
        dict [ for f in flags do
                   match f.Sweep with
                   | JobKey k -> yield k, f.Name
                   | Extra -> yield extraKey f.Name, f.Name
                   | Launch _ -> () ]

    /// The flags it was built from.
    member _.Flags = flags

    interface ITrainCommandLine with
        member _.Command = command
        member _.OutputDirFlag = launchFlag flags RunFolder
        member _.ResumeFlag = launchFlag flags ResumeRun
        member _.JobArguments(job: SweepJob) =
            [| for KeyValue(k, v) in job.TrainArgs do
                   let flag =
                       match byKey.TryGetValue k with
                       | true, f -> f
                       | _ -> fail "sweep job %s: no train flag takes its argument %s (was the sweep made by another version of sfmoe?)" job.Id k
                   match v with
                   | :? (int[]) as xs ->
                       for x in xs do
                           yield flag
                           yield x.ToString(CultureInfo.InvariantCulture)
                   | :? bool as b -> if b then yield flag
                   | v ->
                       yield flag
                       yield Convert.ToString(v, CultureInfo.InvariantCulture) |]
            :> Collections.Generic.IReadOnlyList<string>

/// Refuses extra train options (command-line words) that a sweep sets itself, naming the first.
let refuseSweepSet (flags: Flag list) (words: string seq) =
    for w in words do
        match flags |> List.tryFind (fun f -> List.contains w f.Case.CommandLineNames.Value) with
        | Some f when f.Sweep <> Extra -> fail "%s is set by the sweep for each job; it cannot be an extra train option" w
        | _ -> ()
