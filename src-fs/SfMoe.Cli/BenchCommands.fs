/// `sfmoe bench moe | step | train`: benchmarks that print ratios measured side by side in one run (Bench.fs measures).
module SfMoe.Cli.BenchCommands

open System
open Argu
open TorchSharp
open SfMoe
open SfMoe.Core
open SfMoe.Cli.Output
open SfMoe.Cli.Inputs

type BenchMoeArgs =
    | Dim of n: int
    | Hidden of n: int
    | Experts of n: int
    | Top_K of k: int
    | Tokens of n: int64
    | Tokens_Per_Image of n: int64
    | Capacity of factor: string
    | Policy of policy: string
    | Scope of scope: string
    | Threads of n: int
    | Device of device: string
    | Precision of name: string
    | Warmup of n: int
    | Repeats of n: int
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Dim _ -> "model dim D (default 384)"
            | Hidden _ -> "expert and FFN hidden size H (default 1536)"
            | Experts _ -> "number of experts E (default 4)"
            | Top_K _ -> "1 or 2 (default 2)"
            | Tokens _ -> "tokens per step (default 6336 = 32 images x 198 tokens)"
            | Tokens_Per_Image _ -> "tokens per image: the capacity group with --scope image (default 198)"
            | Capacity _ -> "dropless or a capacity factor (default 1.25)"
            | Policy _ -> "second-expert policy: all (default), none, threshold or random"
            | Scope _ -> "capacity scope: image (default) or batch"
            | Threads _ -> "CPU threads (default: all cores)"
            | Device _ -> "cpu (default), cuda or cuda:N"
            | Precision _ -> precisionUsage
            | Warmup _ -> "untimed runs first (default 3)"
            | Repeats _ -> "timed runs; the median is reported (default 10)"
            | Json -> "print {\"moe_ms\": .., \"dense_ms\": .., \"ratio\": .., ...}"

type BenchStepArgs =
    | Model of name: string
    | Model_Config of file: string
    | Batch_Size of n: int
    | Img_Size of n: int
    | In_Chans of n: int
    | Num_Classes of n: int
    | Threads of n: int
    | Device of device: string
    | Precision of name: string
    | Peak_Tflops of tflops: float
    | Warmup of n: int
    | Repeats of n: int
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "registry model: a ViT, mnist_cnn or resnet50 (default sfmoe_small_patch16_224)"
            | Model_Config _ -> "ViT model config JSON file"
            | Batch_Size _ -> "images per step (default 8)"
            | Img_Size _ -> "input size (default: the model's)"
            | In_Chans _ -> "input channels (default: the model's; 2 for ColoredMNIST)"
            | Num_Classes _ -> "classes of the head (default: the model's)"
            | Threads _ -> "CPU threads (default: all cores)"
            | Device _ -> "cpu (default), cuda or cuda:N"
            | Precision _ -> precisionUsage
            | Peak_Tflops _ -> "the device's peak in TFLOP/s for the MFU (default: the table for H100/H200/A100/V100 by the CUDA device's name or SFMOE_GPU_NAME; on a CPU its measured matmul rate)"
            | Warmup _ -> "untimed steps first (default 2)"
            | Repeats _ -> "timed steps; the median is reported (default 5)"
            | Json -> "print {\"step_ms\": .., \"forward_ms\": .., ...}"

type BenchTrainArgs =
    | Model of name: string
    | Dataset of name: string
    | Data_Dir of dir: string
    | Jpeg_Size of size: int
    | Batch_Size of n: int
    | Steps of n: int
    | Threads of n: int
    | Workers of n: int
    | Algorithm of name: string
    | Device of device: string
    | Precision of name: string
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "model (default: sfmoe_test_patch8_32 for Synthetic, else sfmoe_small_patch16_224)"
            | Dataset _ -> "dataset name or folder (default Synthetic)"
            | Data_Dir _ -> "folder holding the datasets"
            | Jpeg_Size _ -> "instead of a dataset: write the Synthetic dataset as a folder of SIZE x SIZE JPEG files and use it"
            | Batch_Size _ -> "images per environment per step (default 32)"
            | Steps _ -> "steps timed per measurement (default 10)"
            | Threads _ -> "CPU threads for tensor ops (default: all cores)"
            | Workers _ -> "threads decoding and augmenting (default: half the cores)"
            | Algorithm _ -> "ERM, SFMoE (default) or GMoE"
            | Device _ -> "cpu (default), cuda or cuda:N"
            | Precision _ -> precisionUsage
            | Json -> "print the figures as JSON"

type BenchArgs =
    | [<CliPrefix(CliPrefix.None)>] Moe of ParseResults<BenchMoeArgs>
    | [<CliPrefix(CliPrefix.None)>] Train of ParseResults<BenchTrainArgs>
    | [<CliPrefix(CliPrefix.None)>] Step of ParseResults<BenchStepArgs>
    | [<CliPrefix(CliPrefix.None)>] Predict of ParseResults<OnnxCommands.BenchPredictArgs>
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Moe _ -> "forward+backward of the MoE layer against a dense FFN with the same tokens and dims"
            | Step _ -> "one training step (forward, backward, Adam) on random tensors, with achieved GFLOP/s"
            | Train _ -> "images/s of the data pipeline alone, of training alone and of both together, and peak memory"
            | Predict _ -> "images/s of ONNX Runtime on an exported model against the TorchSharp eval forward pass, side by side"

let private parseCapacity (s: string) =
    if s = "dropless" then Config.Dropless
    else
        match Double.TryParse(s, Globalization.NumberStyles.Float, Globalization.CultureInfo.InvariantCulture) with
        | true, f when f > 0.0 -> Config.Factor f
        | _ -> fail "--capacity must be dropless or a number > 0, got %s" s

/// The device of a --device value (a usage error for a bad or unusable one) with the precision's flags set on it;
/// the precision's note on stderr when it is not fp32 (e.g. that tf32 changes nothing on a CPU).
let private devicePrecision (device: string) (precision: string) =
    let p = corePrecisionOf precision
    let dd = match Tensors.Dd.parse device with Ok dd -> dd | Error e -> fail "%s" e
    let note = Tensors.Precision.configure dd.Device p
    if p <> Tensors.Precision.Fp32 then eprintfn "%s" note
    dd, p

let benchMoe (a: ParseResults<BenchMoeArgs>) =
    a.TryGetResult BenchMoeArgs.Threads |> Option.iter (fun t -> torch.set_num_threads (positive "threads" t))
    let dd, precision = devicePrecision (a.GetResult(BenchMoeArgs.Device, defaultValue = "cpu")) (a.GetResult(BenchMoeArgs.Precision, defaultValue = "fp32"))
    let r =
        Bench.moe
            (positive "dim" (a.GetResult(BenchMoeArgs.Dim, defaultValue = 384)))
            (positive "hidden" (a.GetResult(BenchMoeArgs.Hidden, defaultValue = 1536)))
            (positive "experts" (a.GetResult(BenchMoeArgs.Experts, defaultValue = 4)))
            (a.GetResult(BenchMoeArgs.Top_K, defaultValue = 2))
            (a.GetResult(BenchMoeArgs.Tokens, defaultValue = 6336L))
            (a.GetResult(BenchMoeArgs.Tokens_Per_Image, defaultValue = 198L))
            (parseCapacity (a.GetResult(BenchMoeArgs.Capacity, defaultValue = "1.25")))
            (ConfigJson.policyNamed Config.MoeConfig.sfmoe.SecondPolicy (parseChoice "--policy" ConfigJson.policies (a.GetResult(BenchMoeArgs.Policy, defaultValue = "all"))))
            ((parseChoice "--scope" ConfigJson.scopes (a.GetResult(BenchMoeArgs.Scope, defaultValue = "image"))) Config.CapacityScope.defaultMinCapacity)
            (a.GetResult(BenchMoeArgs.Warmup, defaultValue = 3))
            (positive "repeats" (a.GetResult(BenchMoeArgs.Repeats, defaultValue = 10)))
            dd precision
    if a.Contains BenchMoeArgs.Json then Console.WriteLine(json r)
    else
        Console.WriteLine(sprintf "MoE layer: D %d, H %d, E %d, top-%d, policy %s, capacity %s per %s, %d tokens, %s, %s, %d threads"
                            r.dim r.hidden r.experts r.top_k r.policy r.capacity_factor r.scope r.tokens r.device r.precision r.threads)
        Console.WriteLine(sprintf "  token-expert pairs processed: %d (%.3f per token, capacity %d)" r.pairs r.pairs_per_token r.capacity)
        Console.WriteLine(sprintf "  forward+backward, median: MoE %.1f ms, dense FFN %.1f ms, ratio %.3f" r.moe_ms r.dense_ms r.ratio)
        Console.WriteLine(sprintf "  split: experts %.1f ms, router + sort + gather/scatter %.1f ms (%.1f%% of the layer)" r.experts_ms r.routing_ms (100.0 * r.routing_fraction))
    0

let benchStep (a: ParseResults<BenchStepArgs>) =
    a.TryGetResult BenchStepArgs.Threads |> Option.iter (fun t -> torch.set_num_threads (positive "threads" t))
    let dd, precision = devicePrecision (a.GetResult(BenchStepArgs.Device, defaultValue = "cpu")) (a.GetResult(BenchStepArgs.Precision, defaultValue = "fp32"))
    let peak =
        a.TryGetResult BenchStepArgs.Peak_Tflops
        |> Option.map (fun p -> if p > 0.0 && Double.IsFinite p then p else fail "--peak-tflops must be a number > 0, got %g" p)
    let model = a.TryGetResult BenchStepArgs.Model
    let file = a.TryGetResult BenchStepArgs.Model_Config
    let source =
        match model, file with
        | Some _, Some _ -> fail "give --model or --model-config, not both"
        | None, Some path ->
            if not (IO.File.Exists path) then fail "model config %s: file not found" path
            ModelSpec.Json(IO.File.ReadAllText path)
        | m, None -> ModelSpec.Named(defaultArg m "sfmoe_small_patch16_224")
    let name = defaultArg model (defaultArg file "sfmoe_small_patch16_224")
    let arch =
        try
            let spec =
                { ModelSpec.ofSource source with
                    ImgSize = a.TryGetResult BenchStepArgs.Img_Size |> Option.map (positive "img-size")
                    NumClasses = a.TryGetResult BenchStepArgs.Num_Classes |> Option.map (positive "num-classes") }
            let arch = ModelSpec.resolve spec
            match a.TryGetResult BenchStepArgs.In_Chans |> Option.map (positive "in-chans"), arch with
            | None, _ -> arch
            | Some c, Config.VitArch v -> ModelSpec.resolve (ModelSpec.given (Config.VitArch { v with InChans = c }))
            | Some c, Config.CnnArch k -> ModelSpec.resolve (ModelSpec.given (Config.CnnArch { k with InChans = c }))
        with :? ConfigException as e ->
            match file with
            | Some path -> fail "model config %s: %s" path e.Message
            | None -> fail "%s" e.Message
    let r =
        Bench.step arch name (positive "batch-size" (a.GetResult(BenchStepArgs.Batch_Size, defaultValue = 8)))
            (a.GetResult(BenchStepArgs.Warmup, defaultValue = 2)) (positive "repeats" (a.GetResult(BenchStepArgs.Repeats, defaultValue = 5)))
            dd precision peak
    if a.Contains BenchStepArgs.Json then Console.WriteLine(json r)
    else
        Console.WriteLine(sprintf "training step: %s, batch %d, %dx%dx%d, %s, %s, %d threads" r.model r.batch_size r.in_chans r.img_size r.img_size r.device r.precision r.threads)
        Console.WriteLine(sprintf "  step %.1f ms (forward %.1f, backward %.1f, optimizer %.1f), median" r.step_ms r.forward_ms r.backward_ms r.optimizer_ms)
        let rate (gflops: float) = if gflops >= 1000.0 then sprintf "%.1f TFLOP/s" (gflops / 1000.0) else sprintf "%.3g GFLOP/s" gflops
        Console.WriteLine(sprintf "  %.3g GFLOP per step (3 x 2 x MACs, with %.0f token-expert pairs per step = %.2f per token per sparse block), %s"
                            r.step_gflop r.pairs_per_step r.pairs_per_token (rate r.achieved_gflops))
        match Option.ofNullable r.mfu, Option.ofNullable r.peak_tflops with
        | Some mfu, Some peak -> Console.WriteLine(sprintf "  MFU %.1f%% of %s (%s)" (100.0 * mfu) (rate (peak * 1000.0)) r.peak_source)
        | _ -> Console.WriteLine(sprintf "  MFU n/a: %s" r.peak_source)
    0

let benchTrain (a: ParseResults<BenchTrainArgs>) =
    let precision = precisionOf (a.GetResult(BenchTrainArgs.Precision, defaultValue = "fp32"))
    devicePrecision (a.GetResult(BenchTrainArgs.Device, defaultValue = "cpu")) (a.GetResult(BenchTrainArgs.Precision, defaultValue = "fp32")) |> ignore
    let tmp = IO.Path.Combine(IO.Path.GetTempPath(), sprintf "sfmoe-bench-%d" (Diagnostics.Process.GetCurrentProcess().Id))
    try
        let ds =
            match a.TryGetResult BenchTrainArgs.Jpeg_Size with
            | Some size ->
                Runs.TrainBench.WriteJpegFolder(tmp, positive "jpeg-size" size, 200) |> ignore
                Data.Datasets.OpenFolder(tmp, Func<string, Imaging.ImageU8>(Imaging.ImageCodec.Decode)) :> Data.IMultiDomainDataset
            | None ->
                let name = a.GetResult(BenchTrainArgs.Dataset, defaultValue = "Synthetic")
                Data.Datasets.Open(name, a.TryGetResult BenchTrainArgs.Data_Dir |> Option.toObj, Func<string, Imaging.ImageU8>(Imaging.ImageCodec.Decode), Data.DatasetOptions())
        let model =
            a.GetResult(BenchTrainArgs.Model, defaultValue = (if ds.Spec.Name = "Synthetic" then "sfmoe_test_patch8_32" else "sfmoe_small_patch16_224"))
        let r =
            Runs.TrainBench.Run(ds, model, positive "batch-size" (a.GetResult(BenchTrainArgs.Batch_Size, defaultValue = 32)),
                                positive "steps" (a.GetResult(BenchTrainArgs.Steps, defaultValue = 10)),
                                a.TryGetResult BenchTrainArgs.Threads |> Option.map (positive "threads") |> Option.toNullable,
                                a.TryGetResult BenchTrainArgs.Workers |> Option.map (positive "workers") |> Option.toNullable,
                                a.GetResult(BenchTrainArgs.Algorithm, defaultValue = "SFMoE"), 2L <<< 30,
                                a.GetResult(BenchTrainArgs.Device, defaultValue = "cpu"), precision)
        if a.Contains BenchTrainArgs.Json then Console.WriteLine(json r)
        else
            Console.WriteLine(sprintf "training %s on %s: batch %d x %d envs, %d steps, %s, %s, %d threads, %d workers" r.Model r.Dataset r.BatchSize r.Environments r.Steps r.Device r.Precision r.Threads r.Workers)
            Console.WriteLine(sprintf "  data pipeline alone: %.1f images/s" r.PipelineImagesPerSecond)
            Console.WriteLine(sprintf "  training alone:      %.1f images/s" r.TrainingImagesPerSecond)
            Console.WriteLine(sprintf "  together:            %.1f images/s (%.0f%% of training alone)" r.TogetherImagesPerSecond (100.0 * r.TogetherOverTraining))
            Console.WriteLine(sprintf "  peak memory:         %.2f GB" r.PeakMemoryGb)
        0
    finally
        if IO.Directory.Exists tmp then IO.Directory.Delete(tmp, true)
