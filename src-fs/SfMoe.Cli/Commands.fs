/// The CLI's commands: argument schemas (Argu) and their implementations over the C# host's public API.
module SfMoe.Cli.Commands

open System
open System.Diagnostics
open Argu
open TorchSharp
open SfMoe
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Cli.Output

type PatternArgs =
    | [<MainCommand; ExactlyOnce>] Pattern of pattern: string
    | Depth of n: int
    | Model of name: string
    | Model_Config of file: string
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Pattern _ -> "a block pattern such as \"[S,F]x6\", \"Fx5,S,Fx5,S\", \"SFSF\", or a preset (sfmoe, sfmoe-dg, gmoe, vit)"
            | Depth _ -> "check that the pattern has exactly this many blocks"
            | Model _ -> "also print parameters and multiply-accumulates per block of this registry model with the pattern"
            | Model_Config _ -> "the same for a model config JSON file"
            | Json -> "print {\"pattern\": ..., \"blocks\": [...]} (and the per-block table with --model)"

type ForwardArgs =
    | Model of name: string
    | Model_Config of file: string
    | [<Mandatory>] Weights of file: string
    | [<Mandatory>] Input of file: string
    | [<Mandatory>] Output of file: string
    | Mode of mode: string
    | Second_Policy of policy: string
    | Seed of n: int64
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
            | Warmup _ -> "untimed runs first (default 3)"
            | Repeats _ -> "timed runs; the median is reported (default 10)"
            | Json -> "print {\"moe_ms\": .., \"dense_ms\": .., \"ratio\": .., ...}"

type BenchStepArgs =
    | Model of name: string
    | Model_Config of file: string
    | Batch_Size of n: int
    | Img_Size of n: int
    | Threads of n: int
    | Warmup of n: int
    | Repeats of n: int
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "registry model (default sfmoe_small_patch16_224)"
            | Model_Config _ -> "model config JSON file"
            | Batch_Size _ -> "images per step (default 8)"
            | Img_Size _ -> "input size (default: the model's)"
            | Threads _ -> "CPU threads (default: all cores)"
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

type EvaluateArgs =
    | [<Mandatory>] Checkpoint of file: string
    | Dataset of name: string
    | Data_Dir of dir: string
    | Trial_Seed of n: int
    | Workers of n: int
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Checkpoint _ -> "model file (model.safetensors of a run, or an imported model)"
            | Dataset _ -> "dataset name or folder (default: the one the model was trained on)"
            | Data_Dir _ -> "folder holding the datasets"
            | Trial_Seed _ -> "seed of the in/out splits (default 0)"
            | Workers _ -> "threads decoding images (default 1)"
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

type DownloadArgs =
    | [<MainCommand; Mandatory>] Dataset of name: string
    | [<Mandatory>] Data_Dir of dir: string
    | Mirror of url: string
    | Force
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Dataset _ -> "PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, SVIRO or MNIST"
            | Data_Dir _ -> "folder to put it in (DomainBed's layout)"
            | Mirror _ -> "base URL replacing the public sources (also SFMOE_DOWNLOAD_MIRROR)"
            | Force -> "download again even if the dataset is present"

type Command =
    | [<CliPrefix(CliPrefix.None)>] Pattern of ParseResults<PatternArgs>
    | [<CliPrefix(CliPrefix.None)>] Models of ParseResults<ModelsArgs>
    | [<CliPrefix(CliPrefix.None)>] Summary of ParseResults<SummaryArgs>
    | [<CliPrefix(CliPrefix.None)>] Train of ParseResults<TrainArgs>
    | [<CliPrefix(CliPrefix.None)>] Evaluate of ParseResults<EvaluateArgs>
    | [<CliPrefix(CliPrefix.None)>] Predict of ParseResults<PredictArgs>
    | [<CliPrefix(CliPrefix.None)>] Collect of ParseResults<CollectArgs>
    | [<CliPrefix(CliPrefix.None)>] Download of ParseResults<DownloadArgs>
    | [<CliPrefix(CliPrefix.None)>] Forward of ParseResults<ForwardArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<CliPrefix(CliPrefix.None)>] Import of ParseResults<InteropCommands.ImportArgs>
    | [<CliPrefix(CliPrefix.None)>] Export of ParseResults<InteropCommands.ExportArgs>
    | [<CliPrefix(CliPrefix.None)>] Sweep of ParseResults<SweepArgs.SweepArgs>
    | [<CliPrefix(CliPrefix.None)>] Analyze of ParseResults<AnalysisCommands.AnalyzeArgs>
    | [<CliPrefix(CliPrefix.None)>] Plot of ParseResults<AnalysisCommands.PlotArgs>
    | [<CliPrefix(CliPrefix.None)>] Profile of ParseResults<AnalysisCommands.ProfileArgs>
    | [<AltCommandLine("-V")>] Version
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Pattern _ -> "parse a block pattern: canonical form and expanded block kinds"
            | Models _ -> "list the model registry"
            | Summary _ -> "build a model, run it on a random batch, print its block layout and output shape"
            | Train _ -> "train on a DomainBed dataset leaving environments out (default: SF-MoE on the built-in Synthetic dataset)"
            | Evaluate _ -> "accuracy of a model on every environment's in and out split"
            | Predict _ -> "top classes with probabilities for image files"
            | Download _ -> "fetch a dataset DomainBed uses (checksums, resumable) into DomainBed's layout"
            | Collect _ -> "model selection and result tables over runs, exactly as DomainBed (mean +/- standard error over trials)"
            | Forward _ -> "run a model with given weights on an input tensor, write logits, aux loss and routing"
            | Bench _ -> "benchmarks (ratios measured side by side in one run)"
            | Import _ -> "pretrained weights (DeiT, timm, augreg .npz, SF-MoE-DG / GMoE model.pkl, torchvision) into an SfMoe model file, with a full key report"
            | Export _ -> "an SfMoe model file's weights for PyTorch (timm names; .safetensors or torch.save .pth)"
            | Sweep _ -> "DomainBed sweeps: launch jobs locally, in parallel or as a Slurm job array; status, wait, delete-incomplete"
            | Analyze _ -> "look inside a trained model: routing, expert vs attribute, attention maps (PNG, JSON, markdown)"
            | Plot _ -> "training curves of runs from their results.jsonl (PNG)"
            | Profile _ -> "parameters, active parameters, MACs per block, forward/step time and peak memory, next to the dense twin"
            | Version -> "print the version"

/// JSON shape of `sfmoe pattern --json` (field order as documented).
type PatternJson = { pattern: string; blocks: string seq }

let private positive name (v: int) = if v < 1 then fail "--%s must be >= 1, got %d" name v else v

/// A model config from a registry name or a JSON file (exactly one of them).
let loadConfig (model: string option) (file: string option) : Config.VitConfig =
    match model, file with
    | Some _, Some _ -> fail "give --model or --model-config, not both"
    | None, None -> fail "give --model NAME or --model-config FILE"
    | Some name, None ->
        match Registry.tryCreate name with
        | Ok c -> c
        | Error e -> fail "%s" e
    | None, Some path ->
        if not (IO.File.Exists path) then fail "model config %s: file not found" path
        try ModelSpec.parseVit (IO.File.ReadAllText path)
        with :? ConfigException as e -> fail "model config %s: %s" path e.Message

type PartJson = { name: string; kind: string; ``params``: int64; active_params: int64; macs: int64 }
type PatternModelJson = { pattern: string; blocks: string seq; parts: PartJson list; total_params: int64; total_macs: int64 }

let pattern (a: ParseResults<PatternArgs>) =
    let text = a.GetResult PatternArgs.Pattern
    let model = a.TryGetResult PatternArgs.Model
    let file = a.TryGetResult PatternArgs.Model_Config
    let info =
        match a.TryGetResult PatternArgs.Depth, model, file with
        | Some d, _, _ -> Patterns.Parse(text, positive "depth" d)
        | None, None, None -> Patterns.Parse text
        | None, _, _ -> Patterns.Parse text
    let table =
        if model.IsNone && file.IsNone then None
        else
            let c = loadConfig model file
            let p = Core.Pattern.parseOrFail info.Canonical
            let c = { c with Pattern = p }
            match Config.VitConfig.validate c with
            | Error e -> fail "%s" e
            | Ok c -> Some(Summary.table c)
    if a.Contains PatternArgs.Json then
        match table with
        | None -> Console.WriteLine(json { pattern = info.Canonical; blocks = info.Blocks })
        | Some t ->
            let parts = [ for n, k, p, ap, m in t -> { name = n; kind = k; ``params`` = p; active_params = ap; macs = m } ]
            Console.WriteLine(
                json
                    { pattern = info.Canonical
                      blocks = info.Blocks
                      parts = parts
                      total_params = parts |> List.sumBy (fun p -> p.``params``)
                      total_macs = parts |> List.sumBy (fun p -> p.macs) })
    else
        Console.WriteLine("pattern: " + info.Canonical)
        Console.WriteLine(sprintf "blocks (%d): %s" info.Depth (String.Join(" ", info.Blocks)))
        let sparse = info.Blocks |> Seq.indexed |> Seq.filter (fun (_, k) -> k = "S") |> Seq.map (fst >> string) |> Seq.toList
        Console.WriteLine("sparse blocks (0-based): " + (if sparse.IsEmpty then "none" else String.Join(", ", sparse)))
        match table with
        | None -> ()
        | Some t ->
            let mac (m: int64) = sprintf "%.1fM" (float m / 1e6)
            Output.table Console.Out
                [ yield [ "part"; "kind"; "params"; "active/token"; "MACs/image" ]
                  for n, k, p, ap, m in t -> [ n; k; thousands p; thousands ap; mac m ]
                  yield [ "total"; ""; thousands (t |> List.sumBy (fun (_, _, p, _, _) -> p))
                          thousands (t |> List.sumBy (fun (_, _, _, ap, _) -> ap))
                          sprintf "%.2fG" (float (t |> List.sumBy (fun (_, _, _, _, m) -> m)) / 1e9) ] ]
    0

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

let private parseChoice (what: string) (choices: (string * 'a) list) (s: string) =
    match choices |> List.tryFind (fun (n, _) -> n = s) with
    | Some(_, v) -> v
    | None -> fail "%s must be %s, got %s" what (String.Join(", ", choices |> List.map fst)) s

let private parseCapacity (s: string) =
    if s = "dropless" then Config.Dropless
    else
        match Double.TryParse(s, Globalization.NumberStyles.Float, Globalization.CultureInfo.InvariantCulture) with
        | true, f when f > 0.0 -> Config.Factor f
        | _ -> fail "--capacity must be dropless or a number > 0, got %s" s

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
    let weightsPath = a.GetResult ForwardArgs.Weights
    let inputPath = a.GetResult ForwardArgs.Input
    let outputPath = a.GetResult ForwardArgs.Output
    let read (what: string) (path: string) =
        try SafeTensors.read path
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
        try model.Run(x32, returnRouting = true, rng = g)
        with :? ArgumentException as e -> fail "input %s: %s" inputPath (e.Message.Split(" (Parameter")[0])
    let routing =
        [ for b, r in o.Routing do
              let k = r.Index.shape[2]
              for j in 0L .. k - 1L do
                  yield sprintf "routing.%d.index_%d" b (j + 1L), r.Index.select(2L, j).contiguous ()
                  yield sprintf "routing.%d.kept_%d" b (j + 1L), r.Kept.select(2L, j).to_type(torch.ScalarType.Int64)
                  yield sprintf "routing.%d.gate_%d" b (j + 1L), r.Gate.select(2L, j).contiguous () ]
    let meta = Map.ofList [ "config", ConfigJson.toJson false cfg; "mode", (if training then "train" else "eval"); "seed", string seed ]
    try SafeTensors.write outputPath meta ([ "logits", o.Logits; "aux_loss", o.Aux ] @ routing)
    with :? CheckpointException as e -> fail "output %s" e.Message
    for _, t in routing do t.Dispose()
    Console.WriteLine(sprintf "wrote %s: logits %s, aux_loss %.6g, %d sparse blocks" outputPath (Core.Tensors.shapeString o.Logits) (o.Aux.item<float32> ()) o.Routing.Length)
    0

let benchMoe (a: ParseResults<BenchMoeArgs>) =
    a.TryGetResult BenchMoeArgs.Threads |> Option.iter (fun t -> torch.set_num_threads (positive "threads" t))
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
    if a.Contains BenchMoeArgs.Json then Console.WriteLine(json r)
    else
        Console.WriteLine(sprintf "MoE layer: D %d, H %d, E %d, top-%d, policy %s, capacity %s per %s, %d tokens, %d threads"
                            r.dim r.hidden r.experts r.top_k r.policy r.capacity_factor r.scope r.tokens r.threads)
        Console.WriteLine(sprintf "  token-expert pairs processed: %d (%.3f per token, capacity %d)" r.pairs r.pairs_per_token r.capacity)
        Console.WriteLine(sprintf "  forward+backward, median: MoE %.1f ms, dense FFN %.1f ms, ratio %.3f" r.moe_ms r.dense_ms r.ratio)
        Console.WriteLine(sprintf "  split: experts %.1f ms, router + sort + gather/scatter %.1f ms (%.1f%% of the layer)" r.experts_ms r.routing_ms (100.0 * r.routing_fraction))
    0

let benchStep (a: ParseResults<BenchStepArgs>) =
    a.TryGetResult BenchStepArgs.Threads |> Option.iter (fun t -> torch.set_num_threads (positive "threads" t))
    let model = a.TryGetResult BenchStepArgs.Model
    let file = a.TryGetResult BenchStepArgs.Model_Config
    let name = defaultArg model (defaultArg file "sfmoe_small_patch16_224")
    let cfg = loadConfig (if model.IsNone && file.IsNone then Some "sfmoe_small_patch16_224" else model) file
    let cfg =
        match a.TryGetResult BenchStepArgs.Img_Size with
        | Some s -> { cfg with ImgSize = positive "img-size" s }
        | None -> cfg
    match Config.VitConfig.validate cfg with
    | Error e -> fail "%s" e
    | Ok _ -> ()
    let r =
        Bench.step cfg name (positive "batch-size" (a.GetResult(BenchStepArgs.Batch_Size, defaultValue = 8)))
            (a.GetResult(BenchStepArgs.Warmup, defaultValue = 2)) (positive "repeats" (a.GetResult(BenchStepArgs.Repeats, defaultValue = 5)))
    if a.Contains BenchStepArgs.Json then Console.WriteLine(json r)
    else
        Console.WriteLine(sprintf "training step: %s, batch %d, %dx%d, %d threads" r.model r.batch_size r.img_size r.img_size r.threads)
        Console.WriteLine(sprintf "  step %.1f ms (forward %.1f, backward %.1f, optimizer %.1f), median" r.step_ms r.forward_ms r.backward_ms r.optimizer_ms)
        Console.WriteLine(sprintf "  %.1f GFLOP per step (3 x 2 x %.2f GMAC/image), %.1f GFLOP/s = %.0f%% of this machine's 1024^3 matmul rate (%.1f GFLOP/s)"
                            r.step_gflop (float r.macs_per_image / 1e9) r.achieved_gflops (100.0 * r.efficiency) r.matmul_gflops)
    0

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

let train (a: ParseResults<TrainArgs>) =
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
    o.OutputDir <- a.GetResult TrainArgs.Output_Dir
    o.Resume <- a.Contains TrainArgs.Resume
    o.EvalCacheBytes <- int64 (a.GetResult(TrainArgs.Eval_Cache_Mb, defaultValue = 2048)) * 1024L * 1024L
    o.TrainCacheBytes <- int64 (a.GetResult(TrainArgs.Train_Cache_Mb, defaultValue = 2048)) * 1024L * 1024L
    o.SyntheticSize <- a.TryGetResult TrainArgs.Synthetic_Size |> Option.map (positive "synthetic-size") |> Option.toNullable
    o.RecordTimings <- not (a.Contains TrainArgs.No_Timings)
    o.Pretrained <- a.TryGetResult TrainArgs.Pretrained |> Option.toObj
    o.PretrainedFormat <- a.TryGetResult TrainArgs.Pretrained_Format |> Option.toObj
    o.Experts <- a.TryGetResult TrainArgs.Experts |> Option.map (choice "--experts" experts) |> Option.toNullable
    let quiet = a.Contains TrainArgs.Quiet
    o.Logger <- ConsoleLogger(if quiet then Microsoft.Extensions.Logging.LogLevel.Warning else Microsoft.Extensions.Logging.LogLevel.Information)
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

let collect (a: ParseResults<CollectArgs>) =
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

let evaluate (a: ParseResults<EvaluateArgs>) =
    use model = TrainedModel.Load(a.GetResult EvaluateArgs.Checkpoint)
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

let download (a: ParseResults<DownloadArgs>) =
    let dir = a.GetResult DownloadArgs.Data_Dir
    let opts = Data.DownloadOptions(Mirror = (a.TryGetResult DownloadArgs.Mirror |> Option.toObj), Force = a.Contains DownloadArgs.Force)
    let mutable last = ""
    let progress =
        { new IProgress<Data.DownloadProgress> with
            member _.Report p =
                let line =
                    match p.Total |> Option.ofNullable with
                    | Some t when t > 0L -> sprintf "%s %s %.1f%%" p.Stage p.File (100.0 * float p.Done / float t)
                    | _ -> sprintf "%s %s %s" p.Stage p.File (if isNull p.Message then "" else p.Message)
                if line <> last then
                    last <- line
                    Console.Error.WriteLine line }
    let r = Data.Downloader.Fetch(a.GetResult DownloadArgs.Dataset, dir, progress, opts)
    for w in r.Warnings do eprintfn "warning: %s" w
    Console.WriteLine(sprintf "%s %s in %s" r.Dataset (if r.AlreadyPresent then "already present" else "ready") r.Folder)
    0

let benchTrain (a: ParseResults<BenchTrainArgs>) =
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
                                a.GetResult(BenchTrainArgs.Algorithm, defaultValue = "SFMoE"))
        if a.Contains BenchTrainArgs.Json then Console.WriteLine(json r)
        else
            Console.WriteLine(sprintf "training %s on %s: batch %d x %d envs, %d steps, %d threads, %d workers" r.Model r.Dataset r.BatchSize r.Environments r.Steps r.Threads r.Workers)
            Console.WriteLine(sprintf "  data pipeline alone: %.1f images/s" r.PipelineImagesPerSecond)
            Console.WriteLine(sprintf "  training alone:      %.1f images/s" r.TrainingImagesPerSecond)
            Console.WriteLine(sprintf "  together:            %.1f images/s (%.0f%% of training alone)" r.TogetherImagesPerSecond (100.0 * r.TogetherOverTraining))
            Console.WriteLine(sprintf "  peak memory:         %.2f GB" r.PeakMemoryGb)
        0
    finally
        if IO.Directory.Exists tmp then IO.Directory.Delete(tmp, true)
