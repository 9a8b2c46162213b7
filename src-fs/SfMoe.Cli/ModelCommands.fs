/// `sfmoe models`, `summary` and `forward`: the registry, a model's layout on a random batch, and one forward pass with
/// given weights and input written out with its routing.
module SfMoe.Cli.ModelCommands

open System
open System.Diagnostics
open Argu
open TorchSharp
open SfMoe
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Cli.Output
open SfMoe.Cli.Inputs

type ModelsArgs =
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Json -> "print the registry as JSON"

type SummaryArgs =
    | Model of name: string
    | [<AltCommandLine("-p")>] Pattern of pattern: string
    | Batch_Size of n: int
    | Img_Size of n: int
    | Num_Classes of n: int
    | Seed of n: int64
    | Threads of n: int
    | Device of device: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "registry model (default vit_test_patch8_32; see 'sfmoe models')"
            | Pattern _ -> "block pattern or preset overriding the model's"
            | Batch_Size _ -> "images in the random batch (default 2)"
            | Img_Size _ -> "input size (default: the model's)"
            | Num_Classes _ -> "classes of the head (default: the model's)"
            | Seed _ -> "seed for weights and input (default 0)"
            | Threads _ -> "CPU threads (default: all cores)"
            | Device _ -> "cpu (default), cuda or cuda:N"

type ForwardArgs =
    | Model of name: string
    | Model_Config of file: string
    | [<Mandatory>] Weights of file: string
    | [<Mandatory>] Input of file: string
    | [<Mandatory>] Output of file: string
    | Mode of mode: string
    | Second_Policy of policy: string
    | Seed of n: int64
    | Precision of name: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "registry model"
            | Model_Config _ -> "model config JSON file (snake_case keys; see README)"
            | Weights _ -> "weights (.safetensors) by name; SF-MoE-DG and GMoE key names of sparse blocks are mapped"
            | Input _ -> ".safetensors file holding the input tensor x (B, C, H, W)"
            | Output _ -> ".safetensors file to write: logits, aux_loss, routing.{b}.index_1/index_2/kept_1/kept_2/gate_1/gate_2"
            | Mode _ -> "eval (default) or train (training capacity, dropout, gate noise)"
            | Second_Policy _ -> "override the second-expert policy: all, none, threshold or random"
            | Seed _ -> "seed of the random draws (random policy, gate noise, dropout); default 0"
            | Precision _ -> precisionUsage + "; logits, aux_loss and gates are written in float32"

let models (a: ParseResults<ModelsArgs>) =
    let ms = SfMoeModel.ListModels()
    if a.Contains ModelsArgs.Json then
        Console.WriteLine(json ms)
    else
        table Console.Out
            [ yield [ "name"; "pattern"; "dim"; "depth"; "heads"; "patch"; "img"; "params"; "description" ]
              for m in ms ->
                  [ m.Name; m.Pattern; string m.EmbedDim; string m.Depth; string m.Heads; string m.PatchSize; string m.ImageSize
                    thousands m.Parameters; m.Description ] ]
    0

let summary (a: ParseResults<SummaryArgs>) =
    a.TryGetResult SummaryArgs.Threads |> Option.iter (fun t -> torch.set_num_threads (positive "threads" t))
    let seed = a.GetResult(SummaryArgs.Seed, defaultValue = 0L)
    let opts =
        ModelOptions(
            Pattern = (a.TryGetResult SummaryArgs.Pattern |> Option.toObj),
            NumClasses = (a.TryGetResult SummaryArgs.Num_Classes |> Option.map (positive "num-classes") |> Option.toNullable),
            ImageSize = (a.TryGetResult SummaryArgs.Img_Size |> Option.map (positive "img-size") |> Option.toNullable),
            Seed = Nullable seed,
            Device = a.GetResult(SummaryArgs.Device, defaultValue = "cpu"))
    let name = a.GetResult(SummaryArgs.Model, defaultValue = "vit_test_patch8_32")
    let batch = positive "batch-size" (a.GetResult(SummaryArgs.Batch_Size, defaultValue = 2))
    use model = SfMoeModel.Create(name, opts)
    model.Eval()
    Console.WriteLine(sprintf "model: %s   pattern: %s   classes: %d   input: %dx%dx%d" name model.Pattern model.NumClasses model.InChannels model.ImageSize model.ImageSize)
    table Console.Out
        [ yield [ "part"; "kind"; "params" ]
          for b in model.Layout -> [ b.Name; b.Kind; thousands b.Parameters ]
          yield [ "total"; ""; thousands model.ParameterCount ] ]
    torch.manual_seed seed |> ignore
    use x = torch.randn(int64 batch, int64 model.InChannels, int64 model.ImageSize, int64 model.ImageSize)
    use _ = torch.no_grad ()
    let sw = Stopwatch.StartNew()
    use y = model.Forward x
    sw.Stop()
    Console.WriteLine(sprintf "input %s -> logits %s in %.1f ms" (Core.Tensors.shapeString x) (Core.Tensors.shapeString y) sw.Elapsed.TotalMilliseconds)
    0

let forward (a: ParseResults<ForwardArgs>) =
    let cfg = loadConfig (a.TryGetResult ForwardArgs.Model) (a.TryGetResult ForwardArgs.Model_Config)
    let cfg =
        match a.TryGetResult ForwardArgs.Second_Policy with
        | Some p -> { cfg with Moe = { cfg.Moe with SecondPolicy = ConfigJson.policyNamed cfg.Moe.SecondPolicy (parseChoice "--second-policy" ConfigJson.policies p) } }
        | None -> cfg
    let training =
        match a.GetResult(ForwardArgs.Mode, defaultValue = "eval") with
        | "eval" -> false
        | "train" -> true
        | m -> fail "--mode must be eval or train, got %s" m
    let seed = a.GetResult(ForwardArgs.Seed, defaultValue = 0L)
    let precision = corePrecisionOf (a.GetResult(ForwardArgs.Precision, defaultValue = "fp32"))
    if precision <> Tensors.Precision.Fp32 then eprintfn "%s" (Tensors.Precision.configure torch.CPU precision)
    let weightsPath = a.GetResult ForwardArgs.Weights
    let inputPath = a.GetResult ForwardArgs.Input
    let outputPath = a.GetResult ForwardArgs.Output
    let read (what: string) (path: string) =
        try Checkpoints.TensorFiles.ReadSafeTensors path
        with :? CheckpointException as e -> fail "%s %s" what e.Message
    use weights = read "weights" weightsPath
    use input = read "input" inputPath
    let x =
        match input.Find "x" with
        | Some x -> x
        | None -> fail "input %s: no tensor named x (found: %s)" inputPath (String.Join(", ", input.Tensors |> List.map fst))
    use model = new Vit.SfMoeVit(cfg, Dd.cpu, Some seed)
    let mapped = KeyMap.fromAuthors weights.Tensors
    try Weights.load true model mapped.Tensors |> ignore
    with :? CheckpointException as e -> fail "weights %s: %s" weightsPath e.Message
    if training then model.train () |> ignore else model.eval () |> ignore
    use x32 = x.to_type(torch.ScalarType.Float32)
    use g = generator seed Dd.cpu
    use _ = torch.no_grad ()
    use o =
        try model.RunWith({ Ctx.withRng g Ctx.eval with Precision = precision }, x32, false, true)
        with :? ArgumentException as e -> fail "input %s: %s" inputPath (e.Message.Split(" (Parameter")[0])
    let routing =
        [ for b, r in o.Routing do
              let k = r.Index.shape[2]
              for j in 0L .. k - 1L do
                  yield sprintf "routing.%d.index_%d" b (j + 1L), r.Index.select(2L, j).contiguous ()
                  yield sprintf "routing.%d.kept_%d" b (j + 1L), r.Kept.select(2L, j).to_type(torch.ScalarType.Int64)
                  yield sprintf "routing.%d.gate_%d" b (j + 1L), r.Gate.select(2L, j).contiguous () ]
    let meta = Map.ofList [ "config", ConfigJson.toJson false cfg; "mode", (if training then "train" else "eval"); "seed", string seed ]
    try Checkpoints.TensorFiles.WriteSafeTensors(outputPath, meta, [ "logits", o.Logits; "aux_loss", o.Aux ] @ routing)
    with :? CheckpointException as e -> fail "output %s" e.Message
    for _, t in routing do t.Dispose()
    Console.WriteLine(sprintf "wrote %s: logits %s, aux_loss %.6g, %d sparse blocks" outputPath (Core.Tensors.shapeString o.Logits) (o.Aux.item<float32> ()) o.Routing.Length)
    0
