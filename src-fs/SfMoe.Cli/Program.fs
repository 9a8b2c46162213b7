/// Entry point: parse arguments, run a command, turn every user error into one line on stderr and exit code 2.
module SfMoe.Cli.Program

open System
open Argu
open SfMoe
open SfMoe.Cli.Output
open SfMoe.Cli.Commands

let private version =
    let v = Reflection.Assembly.GetExecutingAssembly().GetName().Version
    sprintf "%d.%d.%d" v.Major v.Minor v.Build

let private error (msg: string) =
    let line = msg.Replace("\r", "").Split('\n') |> Array.map (fun s -> s.Trim()) |> Array.filter ((<>) "") |> String.concat " "
    eprintfn "sfmoe: error: %s" line
    2

[<EntryPoint>]
let main argv =
    try
        let parser = ArgumentParser.Create<Command>(programName = "sfmoe")
        let argv, trainArgs = SweepCommands.splitTrainArgs argv
        let results = parser.ParseCommandLine(argv, raiseOnUsage = true)
        if results.Contains Version then
            Console.WriteLine("sfmoe " + version)
            0
        else
            Core.Native.ensure ()
            match results.TryGetSubCommand() with
            | Some(Command.Pattern a) -> PatternCommands.pattern a
            | Some(Models a) -> ModelCommands.models a
            | Some(Summary a) -> ModelCommands.summary a
            | Some(Train a) -> TrainCommands.train a
            | Some(Collect a) -> SweepCommands.collect a
            | Some(Evaluate a) -> TrainCommands.evaluate a
            | Some(Predict a) -> TrainCommands.predict a
            | Some(Download a) -> DownloadCommands.download a
            | Some(Forward a) -> ModelCommands.forward a
            | Some(Import a) -> InteropCommands.import a
            | Some(Export a) -> InteropCommands.export a
            | Some(Sweep a) -> SweepCommands.sweep a trainArgs
            | Some(Analyze b) ->
                match b.TryGetSubCommand() with
                | Some(AnalysisCommands.Routing a) -> AnalysisCommands.routing a
                | Some(AnalysisCommands.Attributes a) -> AnalysisCommands.attributes a
                | Some(AnalysisCommands.Attention a) -> AnalysisCommands.attention a
                | Some(AnalysisCommands.Cub_Keypoints a) -> AnalysisCommands.cubKeypoints a
                | None -> error "analyze needs an analysis: routing, attributes, attention or cub-keypoints (see 'sfmoe analyze --help')"
            | Some(Plot a) -> AnalysisCommands.plot a
            | Some(Profile a) -> AnalysisCommands.profile a
            | Some(Bench b) ->
                match b.TryGetSubCommand() with
                | Some(BenchCommands.Moe a) -> BenchCommands.benchMoe a
                | Some(BenchCommands.Step a) -> BenchCommands.benchStep a
                | Some(BenchCommands.Train a) -> BenchCommands.benchTrain a
                | Some(BenchCommands.Predict a) -> OnnxCommands.benchPredict a
                | None -> error "bench needs a benchmark: moe, step, train or predict (see 'sfmoe bench --help')"
            | _ ->
                Console.Error.WriteLine(parser.PrintUsage())
                2
    with
    | :? ArguParseException as e when e.ErrorCode = ErrorCode.HelpText ->
        Console.WriteLine(e.Message)
        0
    | :? ArguParseException as e ->
        // Argu appends the usage text after the first line; keep only the reason.
        let first = (e.Message.Split('\n') |> Array.head).Replace("ERROR: ", "")
        error (first + " (see 'sfmoe --help')")
    | UsageError msg -> error msg
    | :? SfMoeException as e -> error (ApiFlags.forUser e.Message)
    | :? OperationCanceledException -> error "interrupted"
