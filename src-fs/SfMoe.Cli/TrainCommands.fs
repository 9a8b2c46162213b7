/// `sfmoe train`, `evaluate` and `predict` over the host's training run and trained-model API.
module SfMoe.Cli.TrainCommands

open System
open Argu
open SfMoe
open SfMoe.Cli.Output
open SfMoe.Cli.Inputs
open SfMoe.Cli.TrainFlags

type EvaluateArgs =
    | [<Mandatory>] Checkpoint of file: string
    | Dataset of name: string
    | Data_Dir of dir: string
    | Trial_Seed of n: int
    | Workers of n: int
    | Device of device: string
    | Precision of name: string
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Checkpoint _ -> "model file (model.safetensors of a run, or an imported model)"
            | Dataset _ -> "dataset name or folder (default: the one the model was trained on)"
            | Data_Dir _ -> "folder holding the datasets"
            | Trial_Seed _ -> "seed of the in/out splits (default 0)"
            | Workers _ -> "threads decoding images (default 1)"
            | Device _ -> "cpu (default), cuda or cuda:N"
            | Precision _ -> precisionUsage
            | Json -> "print the accuracies as JSON"

type PredictArgs =
    | Checkpoint of file: string
    | Onnx of file: string
    | [<MainCommand; Mandatory>] Images of image: string list
    | Top of k: int
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Checkpoint _ -> "model file"
            | Onnx _ -> "instead of --checkpoint: an exported .onnx model, run by ONNX Runtime (SfMoe.Onnx, no TorchSharp)"
            | Images _ -> "image files"
            | Top _ -> "classes to show per image (default 5)"
            | Json -> "print predictions as JSON"

/// The final table of a run: accuracy per environment and split at the last evaluation.
let printResult (r: Runs.TrainResult) =
    match r.Evaluations |> Seq.tryLast with
    | None -> ()
    | Some ev ->
        Console.WriteLine(sprintf "step %d: loss %.4f, aux %.4f" ev.Step ev.Loss ev.AuxLoss)
        Output.table Console.Out
            [ yield [ "env"; "name"; "role"; "in acc"; "out acc" ]
              for i, n in Seq.indexed r.EnvNames ->
                  let acc split = match ev.Accuracies.TryGetValue(sprintf "env%d_%s" i split) with | true, v -> sprintf "%.3f" v | _ -> "-"
                  [ string i; n; (if Seq.contains i r.TestEnvs then "test" else "train"); acc "in"; acc "out" ] ]

/// The TrainOptions a train command line sets (TrainFlags.flags declares which flag sets which member; a test checks it).
let options (a: ParseResults<TrainArgs>) =
    let o = Runs.TrainOptions()
    o.Dataset <- a.TryGetResult TrainArgs.Dataset |> Option.toObj
    o.DataDir <- a.TryGetResult TrainArgs.Data_Dir |> Option.toObj
    let tes = a.GetResults TrainArgs.Test_Env
    if not tes.IsEmpty then o.TestEnvs <- ResizeArray tes
    o.Algorithm <-
        a.GetResult(TrainArgs.Algorithm, defaultValue = "SFMoE")
        |> fun s ->
            match [ "ERM", Runs.Algorithm.ERM; "SFMoE", Runs.Algorithm.SFMoE; "GMoE", Runs.Algorithm.GMoE ]
                  |> List.tryFind (fun (n, _) -> String.Equals(n, s, StringComparison.OrdinalIgnoreCase)) with
            | Some(_, v) -> v
            | None -> fail "unknown algorithm %s: expected ERM, SFMoE or GMoE" s
    o.Model <- a.TryGetResult TrainArgs.Model |> Option.toObj
    match a.TryGetResult TrainArgs.Model_Config with
    | Some path ->
        if not (IO.File.Exists path) then fail "model config %s: file not found" path
        if o.Model <> null then fail "give --model or --model-config, not both"
        o.ModelConfigJson <- IO.File.ReadAllText path
    | None -> ()
    o.Pattern <- a.TryGetResult TrainArgs.Pattern |> Option.toObj
    o.Steps <- a.TryGetResult TrainArgs.Steps |> Option.map (positive "steps") |> Option.toNullable
    o.CheckpointFreq <- a.TryGetResult TrainArgs.Checkpoint_Freq |> Option.map (positive "checkpoint-freq") |> Option.toNullable
    o.BatchSize <- a.TryGetResult TrainArgs.Batch_Size |> Option.map (positive "batch-size") |> Option.toNullable
    o.Lr <- a.TryGetResult TrainArgs.Lr |> Option.map (fun x -> if x > 0.0 then x else fail "--lr must be > 0, got %g" x) |> Option.toNullable
    o.WeightDecay <- a.TryGetResult TrainArgs.Weight_Decay |> Option.map (fun x -> if x >= 0.0 then x else fail "--weight-decay must be >= 0, got %g" x) |> Option.toNullable
    o.Optimizer <- choice "--optimizer" [ "adam", Runs.Optimizer.Adam; "adamw", Runs.Optimizer.AdamW ] (a.GetResult(TrainArgs.Optimizer, defaultValue = "adam"))
    o.Seed <- a.GetResult(TrainArgs.Seed, defaultValue = 0)
    o.TrialSeed <- a.GetResult(TrainArgs.Trial_Seed, defaultValue = 0)
    o.HparamsSeed <- a.GetResult(TrainArgs.Hparams_Seed, defaultValue = 0)
    o.Threads <- a.TryGetResult TrainArgs.Threads |> Option.map (positive "threads") |> Option.toNullable
    o.Workers <- a.TryGetResult TrainArgs.Workers |> Option.map (positive "workers") |> Option.toNullable
    o.Device <- a.GetResult(TrainArgs.Device, defaultValue = "cpu")
    o.Precision <- a.TryGetResult TrainArgs.Precision |> Option.map precisionOf |> Option.toNullable
    o.Deterministic <- a.Contains TrainArgs.Deterministic
    o.OutputDir <- a.GetResult TrainArgs.Output_Dir
    o.Resume <- a.Contains TrainArgs.Resume
    o.EvalCacheBytes <- int64 (a.GetResult(TrainArgs.Eval_Cache_Mb, defaultValue = 2048)) * 1024L * 1024L
    o.TrainCacheBytes <- int64 (a.GetResult(TrainArgs.Train_Cache_Mb, defaultValue = 2048)) * 1024L * 1024L
    o.SyntheticSize <- a.TryGetResult TrainArgs.Synthetic_Size |> Option.map (positive "synthetic-size") |> Option.toNullable
    o.RecordTimings <- not (a.Contains TrainArgs.No_Timings)
    o.Pretrained <- a.TryGetResult TrainArgs.Pretrained |> Option.toObj
    o.PretrainedFormat <- a.TryGetResult TrainArgs.Pretrained_Format |> Option.toObj
    o.Experts <- a.TryGetResult TrainArgs.Experts |> Option.map (choice "--experts" experts) |> Option.toNullable
    o.Logger <- ConsoleLogger(if a.Contains TrainArgs.Quiet then Microsoft.Extensions.Logging.LogLevel.Warning else Microsoft.Extensions.Logging.LogLevel.Information)
    o

let train (a: ParseResults<TrainArgs>) =
    let o = options a
    let quiet = a.Contains TrainArgs.Quiet
    let live = not quiet && not Console.IsOutputRedirected
    let mutable lastPrint = DateTime.MinValue
    let progress =
        { new IProgress<Runs.TrainProgress> with
            member _.Report p =
                if not quiet then
                    let line =
                        sprintf "step %d/%d  loss %.4f  aux %.4f  %.0f ms/step  ETA %s" (p.Step + 1) p.TotalSteps p.Loss p.AuxLoss
                            (p.StepTimeSeconds * 1000.0) (p.Eta.ToString(@"hh\:mm\:ss"))
                    match Option.ofObj p.Evaluation with
                    | Some ev ->
                        if live then Console.Write("\r" + String(' ', 100) + "\r")
                        let accs = ev.Accuracies |> Seq.map (fun kv -> sprintf "%s %.3f" kv.Key kv.Value) |> String.concat "  "
                        Console.WriteLine(sprintf "eval @ step %d: loss %.4f  aux %.4f  %s" ev.Step ev.Loss ev.AuxLoss accs)
                    | None ->
                        if live && (DateTime.UtcNow - lastPrint).TotalMilliseconds > 200.0 then
                            lastPrint <- DateTime.UtcNow
                            Console.Write("\r" + line.PadRight(100))
                        elif not live && (p.Step + 1) % 50 = 0 then Console.WriteLine line }
    use cts = new Threading.CancellationTokenSource()
    Console.CancelKeyPress.Add(fun e ->
        e.Cancel <- true
        cts.Cancel())
    let r = Runs.Trainer.Run(o, progress, cts.Token)
    if live then Console.Write("\r" + String(' ', 100) + "\r")
    printResult r
    Console.WriteLine(sprintf "results: %s" (IO.Path.Combine(r.OutputDir, "results.jsonl")))
    Console.WriteLine(sprintf "model:   %s" r.ModelPath)
    0

let evaluate (a: ParseResults<EvaluateArgs>) =
    let precision = precisionOf (a.GetResult(EvaluateArgs.Precision, defaultValue = "fp32"))
    use model = TrainedModel.Load(a.GetResult EvaluateArgs.Checkpoint, a.GetResult(EvaluateArgs.Device, defaultValue = "cpu"), precision)
    if precision <> SfMoe.Precision.Fp32 then eprintfn "%s" model.PrecisionNote
    let name =
        match a.TryGetResult EvaluateArgs.Dataset, model.Header.Dataset with
        | Some d, _ -> d
        | None, null -> fail "the model file does not name its dataset: give --dataset"
        | None, d -> d
    let ds = Data.Datasets.Open(name, a.TryGetResult EvaluateArgs.Data_Dir |> Option.toObj, Func<string, Imaging.ImageU8>(Imaging.ImageCodec.Decode), Data.DatasetOptions())
    let r = model.Evaluate(ds, a.GetResult(EvaluateArgs.Trial_Seed, defaultValue = 0), workers = positive "workers" (a.GetResult(EvaluateArgs.Workers, defaultValue = 1)))
    if a.Contains EvaluateArgs.Json then Console.WriteLine(json r.Accuracies)
    else
        Console.WriteLine(sprintf "%s on %s (step %d)" (IO.Path.GetFileName(a.GetResult EvaluateArgs.Checkpoint)) r.Dataset model.Header.Step)
        Output.table Console.Out
            [ yield [ "env"; "name"; "in acc"; "in n"; "out acc"; "out n" ]
              for i, n in Seq.indexed r.Environments ->
                  let k s = sprintf "env%d_%s" i s
                  [ string i; n; sprintf "%.3f" r.Accuracies[k "in"]; string r.Counts[k "in"]; sprintf "%.3f" r.Accuracies[k "out"]; string r.Counts[k "out"] ] ]
    0

type PredictionJson = { image: string; predictions: {| ``class``: string; index: int; probability: float |} list }

let predict (a: ParseResults<PredictArgs>) =
    let top = positive "top" (a.GetResult(PredictArgs.Top, defaultValue = 5))
    let images = a.GetResult PredictArgs.Images
    let results =
        match a.TryGetResult PredictArgs.Checkpoint, a.TryGetResult PredictArgs.Onnx with
        | Some ckpt, None ->
            use model = TrainedModel.Load ckpt
            [ for img in images -> img, [ for p in model.Predict(img, top) -> p.Class, p.Index, p.Probability ] ]
        | None, Some onnx -> OnnxCommands.predict onnx images top
        | _ -> fail "give --checkpoint or --onnx (one of them)"
    if a.Contains PredictArgs.Json then
        Console.WriteLine(json [ for img, ps in results -> { image = img; predictions = [ for c, i, p in ps -> {| ``class`` = c; index = i; probability = p |} ] } ])
    else
        for img, ps in results do
            Console.WriteLine img
            for c, _, p in ps do Console.WriteLine(sprintf "  %-20s %6.2f%%" c (100.0 * p))
    0
