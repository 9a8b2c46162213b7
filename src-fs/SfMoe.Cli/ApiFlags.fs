/// The CLI's words for what library messages name: each options member the CLI fills, with the flag that fills it
/// (both sides checked by the compiler: a property quotation and an Argu case), the API calls the libraries suggest
/// and the commands that do them, and a few phrases. Program.fs rewrites every library message with it.
module SfMoe.Cli.ApiFlags

open System.Text.RegularExpressions
open Argu
open SfMoe
open SfMoe.Analysis
open SfMoe.Checkpoints
open SfMoe.Data
open SfMoe.Runs.Sweeps
open SfMoe.Cli.ApiNames
open SfMoe.Cli.Commands

let private importFlags =
    let p = ArgumentParser.Create<InteropCommands.ImportArgs>()
    [ memberFlag <@ fun (o: ImportOptions) -> o.Model @> (p.GetArgumentCaseInfo <@ InteropCommands.ImportArgs.Model @>)
      memberFlag <@ fun (o: ImportOptions) -> o.ModelConfigJson @> (p.GetArgumentCaseInfo <@ InteropCommands.ImportArgs.Model_Config @>)
      memberFlag <@ fun (o: ImportOptions) -> o.NumClasses @> (p.GetArgumentCaseInfo <@ InteropCommands.ImportArgs.Num_Classes @>)
      memberFlag <@ fun (o: ImportOptions) -> o.ImageSize @> (p.GetArgumentCaseInfo <@ InteropCommands.ImportArgs.Img_Size @>)
      memberFlag <@ fun (o: ImportOptions) -> o.Experts @> (p.GetArgumentCaseInfo <@ InteropCommands.ImportArgs.Experts @>)
      memberFlag <@ fun (o: ImportOptions) -> o.Normalization @> (p.GetArgumentCaseInfo <@ InteropCommands.ImportArgs.Normalization @>)
      memberFlag <@ fun (o: ImportOptions) -> o.Seed @> (p.GetArgumentCaseInfo <@ InteropCommands.ImportArgs.Seed @>) ]

let private analysisFlags =
    let r = ArgumentParser.Create<AnalysisCommands.RoutingArgs>()
    let a = ArgumentParser.Create<AnalysisCommands.AttributesArgs>()
    let t = ArgumentParser.Create<AnalysisCommands.AttentionArgs>()
    [ // the settings routing and attribute reports share (DatasetAnalysisOptions): the same flags in both commands
      memberFlag <@ fun (o: RoutingReportOptions) -> o.Checkpoint @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Checkpoint @>)
      memberFlag <@ fun (o: RoutingReportOptions) -> o.Dataset @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Dataset @>)
      memberFlag <@ fun (o: RoutingReportOptions) -> o.DataDir @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Data_Dir @>)
      memberFlag <@ fun (o: RoutingReportOptions) -> o.Split @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Split @>)
      memberFlag <@ fun (o: RoutingReportOptions) -> o.MaxImages @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Max_Images @>)
      memberFlag <@ fun (o: RoutingReportOptions) -> o.BatchSize @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Batch_Size @>)
      memberFlag <@ fun (o: RoutingReportOptions) -> o.TrialSeed @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Trial_Seed @>)
      memberFlag <@ fun (o: RoutingReportOptions) -> o.Seed @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Seed @>)
      memberFlag <@ fun (o: RoutingReportOptions) -> o.Device @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Device @>)
      memberFlag <@ fun (o: RoutingReportOptions) -> o.OutputDir @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Output_Dir @>)
      memberFlag <@ fun (o: RoutingReportOptions) -> o.Samples @> (r.GetArgumentCaseInfo <@ AnalysisCommands.RoutingArgs.Samples @>)
      memberFlag <@ fun (o: AttributeReportOptions) -> o.Keypoints @> (a.GetArgumentCaseInfo <@ AnalysisCommands.AttributesArgs.Keypoints @>)
      memberFlag <@ fun (o: AttributeReportOptions) -> o.ImageRoot @> (a.GetArgumentCaseInfo <@ AnalysisCommands.AttributesArgs.Image_Root @>)
      memberFlag <@ fun (o: AttributeReportOptions) -> o.PatchesPerKeypoint @> (a.GetArgumentCaseInfo <@ AnalysisCommands.AttributesArgs.Patches_Per_Keypoint @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.Checkpoints @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Checkpoint @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.Dataset @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Dataset @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.DataDir @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Data_Dir @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.MaxImages @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Max_Images @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.Samples @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Samples @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.Block @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Block @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.Threshold @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Threshold @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.BatchSize @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Batch_Size @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.Seed @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Seed @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.Device @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Device @>)
      memberFlag <@ fun (o: AttentionReportOptions) -> o.OutputDir @> (t.GetArgumentCaseInfo <@ AnalysisCommands.AttentionArgs.Output_Dir @>) ]

let private downloadParser = ArgumentParser.Create<DownloadCommands.DownloadArgs>()
let private dataDirFlag = flagOf (downloadParser.GetArgumentCaseInfo <@ DownloadCommands.DownloadArgs.Data_Dir @>)

let private dataFlags =
    [ memberFlag <@ fun (o: DownloadOptions) -> o.Mirror @> (downloadParser.GetArgumentCaseInfo <@ DownloadCommands.DownloadArgs.Mirror @>)
      memberFlag <@ fun (o: DownloadOptions) -> o.Force @> (downloadParser.GetArgumentCaseInfo DownloadCommands.DownloadArgs.Force)
      // every command that opens a dataset takes its folder as --data-dir
      { Api = typeof<Datasets>.Name + "." + nameof Datasets.Open + "(dataDir)"; Cli = dataDirFlag } ]

let private sweepFlags =
    let l = ArgumentParser.Create<SweepArgs.LaunchArgs>()
    [ memberFlag <@ fun (o: LocalLauncher) -> o.Parallel @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Jobs @>)
      memberFlag <@ fun (o: LocalLauncher) -> o.GpusPerJob @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Gpus_Per_Job @>)
      memberFlag <@ fun (m: SweepManifest) -> m.Directory @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Output_Dir @>)
      memberFlag <@ fun (o: SlurmOptions) -> o.Partition @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Partition @>)
      memberFlag <@ fun (o: SlurmOptions) -> o.Time @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Time @>)
      memberFlag <@ fun (o: SlurmOptions) -> o.CpusPerTask @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Cpus_Per_Task @>)
      memberFlag <@ fun (o: SlurmOptions) -> o.Gpus @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Gpus @>)
      memberFlag <@ fun (o: SlurmOptions) -> o.Mem @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Mem @>)
      memberFlag <@ fun (o: SlurmOptions) -> o.MaxConcurrent @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Max_Concurrent @>)
      memberFlag <@ fun (o: SlurmOptions) -> o.JobName @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Job_Name @>)
      memberFlag <@ fun (o: SlurmOptions) -> o.ExtraLines @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Sbatch @>)
      memberFlag <@ fun (o: SlurmOptions) -> o.MaxArraySize @> (l.GetArgumentCaseInfo <@ SweepArgs.LaunchArgs.Max_Array_Size @>) ]

/// "sfmoe models", "sfmoe sweep launch": a command as users type it.
let private commandWords (c: Quotations.Expr<ParseResults<'Sub> -> Command>) (sub: string list) =
    String.concat " " ("sfmoe" :: flagOf (ArgumentParser.Create<Command>().GetArgumentCaseInfo c) :: sub)

let private commands =
    let launch = flagOf (ArgumentParser.Create<SweepArgs.SweepArgs>().GetArgumentCaseInfo <@ SweepArgs.Launch @>)
    [ { Api = typeof<SweepManifest>.Name + "." + nameof SweepManifest.Create; Cli = commandWords <@ Sweep @> [ launch ] } ]

/// Everything the CLI renames in library messages.
let rewrites : Lazy<Rewrites> =
    lazy
        { Tokens = tokens (TrainFlags.renames @ importFlags @ analysisFlags @ dataFlags @ sweepFlags @ commands)
          Calls =
            [ // `Downloader.Fetch("PACS", "/data")` -> `sfmoe download PACS --data-dir /data`
              Regex(Regex.Escape(typeof<Downloader>.Name + "." + nameof Downloader.Fetch) + @"\(""([^""]*)"", ""([^""]*)""\)"),
              fun m -> sprintf "%s %s %s %s" (commandWords <@ Download @> []) m.Groups[1].Value dataDirFlag m.Groups[2].Value ]
          Phrases = [ "(the registry lists them all)", sprintf "('%s' lists them all)" (commandWords <@ Models @> []) ] }

/// A library message in the CLI's words.
let forUser (message: string) = rewrite rewrites.Value message
