/// ONNX commands: `sfmoe export --format onnx` (the flags map onto OnnxExportOptions), `sfmoe predict --onnx` (SfMoe.Onnx)
/// and `sfmoe bench predict` (ONNX Runtime against the TorchSharp eval forward pass, side by side).
module SfMoe.Cli.OnnxCommands

open System
open Argu
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Onnx
open SfMoe.Checkpoints
open SfMoe.Cli.Output

/// `sfmoe export --format onnx`.
let export (checkpoint: string) (output: string) (batch: string option) (opset: int option) (randomAsThreshold: bool) (routingOutputs: bool) =
    let o = OnnxExportOptions(RandomPolicyAsThreshold = randomAsThreshold, RoutingOutputs = routingOutputs)
    opset |> Option.iter (fun v -> o.Opset <- v)
    o.BatchSize <-
        match batch with
        | None -> Nullable()
        | Some b when String.Equals(b, "dynamic", StringComparison.OrdinalIgnoreCase) -> Nullable()
        | Some b ->
            match Int32.TryParse b with
            | true, n when n >= 1 -> Nullable n
            | _ -> fail "--batch must be dynamic or a batch size >= 1, got %s" b
    let r = OnnxExporter.Export(checkpoint, output, o)
    let batchText = if r.BatchSize.HasValue then string r.BatchSize.Value else "dynamic"
    Console.WriteLine(sprintf "wrote %s (onnx, opset %d, batch %s, %.1f MB)" output r.Opset batchText (float r.Bytes / 1e6))
    if r.Stochastic then
        Console.WriteLine "note: the random second-expert policy is exported as drawn (RandomUniformLike): outputs vary from run to run; --random-as-threshold serves it deterministically"
    0

/// SfMoe.Onnx's errors (a foreign or corrupt .onnx file, an undecodable image) as user errors: one line, exit code 2.
let private guarded (f: unit -> 'T) : 'T =
    try f ()
    with
    | :? SfMoe.Onnx.OnnxModelException as e -> raise (UsageError e.Message)
    | :? SfMoe.Imaging.ImageLoadException as e -> raise (UsageError e.Message)

/// `sfmoe predict --onnx`: the top classes of each image by ONNX Runtime, as (image, [class, index, probability]).
let predict (onnx: string) (images: string list) (top: int) : (string * (string * int * float) list) list =
    guarded (fun () ->
        use m = SfMoe.Onnx.OnnxModel.Load onnx
        let results = m.PredictBatch(List.toArray images, top)
        [ for img, ps in Seq.zip images results -> img, [ for p in ps -> p.Class, p.Index, p.Probability ] ])

type BenchPredictArgs =
    | Onnx of file: string
    | Checkpoint of file: string
    | Model of name: string
    | Batch_Sizes of sizes: string
    | Threads of n: int
    | Warmup of n: int
    | Repeats of n: int
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Onnx _ -> "the exported model (sfmoe export --format onnx)"
            | Checkpoint _ -> "the model file it was exported from: TorchSharp runs these weights (default: the ONNX file's architecture with seed-0 weights)"
            | Model _ -> "instead of --onnx: a registry model with seed-0 weights, exported to a temporary file (e.g. sfmoe_small_patch16_224)"
            | Batch_Sizes _ -> "comma-separated batch sizes (default 1,32; a fixed-batch export runs its own size only)"
            | Threads _ -> "CPU threads of both (default: all cores)"
            | Warmup _ -> "untimed runs of each first (default 2)"
            | Repeats _ -> "timed runs of each, interleaved (default 5)"
            | Json -> "print the results as JSON"

type BenchPredictRow =
    { batch: int
      onnx_images_per_s: float
      torchsharp_images_per_s: float
      ratio: float
      onnx_ms: float
      torchsharp_ms: float
      max_rel_diff: float }

/// `sfmoe bench predict`: ONNX Runtime against the TorchSharp eval forward pass on the same inputs, interleaved, in one run.
let benchPredict (a: ParseResults<BenchPredictArgs>) =
    let threads = a.GetResult(BenchPredictArgs.Threads, defaultValue = Environment.ProcessorCount)
    let warmup = a.GetResult(BenchPredictArgs.Warmup, defaultValue = 2)
    let repeats = a.GetResult(BenchPredictArgs.Repeats, defaultValue = 5)
    if threads < 1 then fail "--threads must be >= 1, got %d" threads
    if warmup < 0 then fail "--warmup must be >= 0, got %d" warmup
    if repeats < 1 then fail "--repeats must be >= 1, got %d" repeats
    let sizes =
        a.GetResult(BenchPredictArgs.Batch_Sizes, defaultValue = "1,32").Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
        |> Array.map (fun s -> match Int32.TryParse s with | true, n when n >= 1 -> n | _ -> fail "--batch-sizes must list sizes >= 1, got %s" s)
        |> List.ofArray
    torch.set_num_threads threads
    let temp = ref None
    let net, arch, onnxPath, source =
        match a.TryGetResult BenchPredictArgs.Onnx, a.TryGetResult BenchPredictArgs.Checkpoint, a.TryGetResult BenchPredictArgs.Model with
        | Some onnx, Some ckpt, None ->
            let struct (net, header) = ModelFile.Load(ckpt, "cpu")
            net, ModelFile.Architecture header, onnx, sprintf "TorchSharp: %s" ckpt
        | Some onnx, None, None ->
            use m = guarded (fun () -> SfMoe.Onnx.OnnxModel.Load onnx)
            let meta = m.Metadata
            let config = match meta.TryGetValue "model_config" with | true, c -> Some c | _ -> None
            let arch = ModelSpec.ofHeader m.Backbone config m.NumClasses m.Channels m.ImageSize
            Networks.build arch Dd.cpu 0L 0.0, arch, onnx, "TorchSharp: the same architecture with seed-0 weights (--checkpoint for the file's)"
        | None, None, Some name ->
            let arch = ModelSpec.resolve (ModelSpec.named name)
            let net = Networks.build arch Dd.cpu 0L 0.0
            let path = IO.Path.Combine(IO.Path.GetTempPath(), sprintf "sfmoe-bench-%s.onnx" (Guid.NewGuid().ToString "N"))
            temp.Value <- Some path
            let header =
                ModelHeader(Architecture.backbone arch, Option.toObj (ModelSpec.vitJson arch), Architecture.numClasses arch,
                            Architecture.inChans arch, Architecture.imgSize arch, [||], null, 0, "none", "{}",
                            SfMoe.Data.Transforms.ImageNetMean.ToArray(), SfMoe.Data.Transforms.ImageNetStd.ToArray())
            OnnxExporter.Write(path, net, header) |> ignore
            net, arch, path, sprintf "%s with seed-0 weights, both sides" name
        | _ -> fail "give --onnx FILE (optionally with --checkpoint MODEL), or --model NAME alone"
    use _ = net.Module
    try
        net.SetTraining false
        let o = SfMoe.Onnx.OnnxModelOptions(Threads = Nullable threads, BatchSize = List.max sizes)
        use ort = guarded (fun () -> SfMoe.Onnx.OnnxModel.Load(onnxPath, o))
        let sizes = if ort.FixedBatchSize.HasValue then [ int ort.FixedBatchSize.Value ] else sizes
        let c, s = int64 (Architecture.inChans arch), int64 (Architecture.imgSize arch)
        let rows =
            [ for b in sizes ->
                  use g = generator (int64 b) Dd.cpu
                  use x = torch.randn([| int64 b; c; s; s |], generator = g)
                  let inputs = x.data<float32>().ToArray()
                  let torchLogits () =
                      use _ = torch.no_grad ()
                      let out = Networks.forward net None false x
                      out.Aux.Dispose()
                      out.Logits
                  let ortLogits () = ort.Logits(inputs, b)
                  // Agreement of the two (ONNX Runtime's random policy draws its own numbers: then a rough check only).
                  let diff =
                      use t = torchLogits ()
                      use o = torch.tensor(ortLogits (), ReadOnlySpan<int64>(t.shape))
                      use d = (o - t).abs().max()
                      use m = t.abs().max()
                      d.item<float32>() / max (m.item<float32>()) 1e-30f |> float
                  for _ in 1..warmup do
                      (torchLogits ()).Dispose()
                      ortLogits () |> ignore
                  let tTimes, oTimes = ResizeArray(), ResizeArray()
                  for _ in 1..repeats do
                      let sw = Diagnostics.Stopwatch.StartNew()
                      (torchLogits ()).Dispose()
                      tTimes.Add sw.Elapsed.TotalMilliseconds
                      sw.Restart()
                      ortLogits () |> ignore
                      oTimes.Add sw.Elapsed.TotalMilliseconds
                  let tMs, oMs = Bench.median (List.ofSeq tTimes), Bench.median (List.ofSeq oTimes)
                  { batch = b
                    onnx_images_per_s = float b * 1000.0 / oMs
                    torchsharp_images_per_s = float b * 1000.0 / tMs
                    ratio = tMs / oMs
                    onnx_ms = oMs
                    torchsharp_ms = tMs
                    max_rel_diff = diff } ]
        if a.Contains BenchPredictArgs.Json then Console.WriteLine(json rows)
        else
            Console.WriteLine(sprintf "model: %s (%s), %d threads, median of %d interleaved runs after %d warm-up" (IO.Path.GetFileName onnxPath) source threads repeats warmup)
            let torchRandom =
                match arch with
                | VitArch c -> c.Moe.TopK = 2 && (match c.Moe.SecondPolicy with SecondRandom _ -> true | _ -> false)
                | CnnArch _ -> false
            if ort.Stochastic || torchRandom then
                Console.WriteLine "note: a side draws random numbers (the random second-expert policy): the logits differ by design"
            table Console.Out
                ([ "batch"; "onnx img/s"; "torchsharp img/s"; "onnx/torchsharp"; "onnx ms"; "torchsharp ms"; "max rel diff" ]
                 :: [ for r in rows ->
                          [ string r.batch; sprintf "%.1f" r.onnx_images_per_s; sprintf "%.1f" r.torchsharp_images_per_s
                            sprintf "%.2fx" r.ratio; sprintf "%.1f" r.onnx_ms; sprintf "%.1f" r.torchsharp_ms; sprintf "%.1e" r.max_rel_diff ] ])
        0
    finally
        temp.Value |> Option.iter (fun p -> try IO.File.Delete p with _ -> ())
