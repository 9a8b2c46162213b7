/// Analysis commands: `analyze routing | attributes | attention | cub-keypoints`, `plot` and `profile`, thin clients of
/// the C# host's SfMoe.Analysis API (which writes every file).
module SfMoe.Cli.AnalysisCommands

open System
open Argu
open TorchSharp
open SfMoe
open SfMoe.Analysis
open SfMoe.Cli.Output
open SfMoe.Cli.Inputs

type RoutingArgs =
    | [<Mandatory>] Checkpoint of file: string
    | Dataset of name: string
    | Data_Dir of dir: string
    | Split of split: string
    | Max_Images of n: int
    | Samples of n: int
    | Batch_Size of n: int
    | Trial_Seed of n: int
    | Seed of n: int64
    | Device of device: string
    | [<Mandatory>] Output_Dir of dir: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Checkpoint _ -> "model file (a ViT/SF-MoE model.safetensors)"
            | Dataset _ -> "dataset name or folder (default: the one the model was trained on)"
            | Data_Dir _ -> "folder holding the datasets"
            | Split _ -> "in (default: the 80% DomainBed trains on), out or all"
            | Max_Images _ -> "images per environment (default 200)"
            | Samples _ -> "images per environment drawn as expert maps (default 2)"
            | Batch_Size _ -> "images per forward pass (default 32)"
            | Trial_Seed _ -> "seed of the in/out splits (default 0)"
            | Seed _ -> "seed of the model's random choices, e.g. the random second expert (default 0)"
            | Device _ -> "cpu (default) or cuda"
            | Output_Dir _ -> "where routing.json, routing.md and the PNGs go"

type AttributesArgs =
    | [<Mandatory>] Checkpoint of file: string
    | Dataset of name: string
    | Data_Dir of dir: string
    | Keypoints of file: string
    | Image_Root of dir: string
    | Split of split: string
    | Max_Images of n: int
    | Patches_Per_Keypoint of n: int
    | Batch_Size of n: int
    | Trial_Seed of n: int
    | Seed of n: int64
    | Device of device: string
    | [<Mandatory>] Output_Dir of dir: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Checkpoint _ -> "model file"
            | Dataset _ -> "dataset name or folder (default: the model's; Synthetic has built-in keypoints)"
            | Data_Dir _ -> "folder holding the datasets"
            | Keypoints _ -> "keypoints JSON: {\"<image path>\": {\"<part>\": [x, y], ...}, ...} (README, Analysis)"
            | Image_Root _ -> "instead of a dataset: the folder the keypoints file's image paths are relative to"
            | Split _ -> "in (default), out or all"
            | Max_Images _ -> "images per environment (default 200; with --image-root, in all)"
            | Patches_Per_Keypoint _ -> "nearest patches counted per keypoint (default 9, as GMoE)"
            | Batch_Size _ -> "images per forward pass (default 32)"
            | Trial_Seed _ -> "seed of the in/out splits (default 0)"
            | Seed _ -> "seed of the model's random choices (default 0)"
            | Device _ -> "cpu (default) or cuda"
            | Output_Dir _ -> "where attributes.json, attributes.md and the heatmaps go"

type AttentionArgs =
    | [<Mandatory>] Checkpoint of file: string
    | [<MainCommand>] Images of image: string list
    | Dataset of name: string
    | Data_Dir of dir: string
    | Max_Images of n: int
    | Samples of n: int
    | Block of index: int
    | Threshold of mass: float
    | Batch_Size of n: int
    | Seed of n: int64
    | Device of device: string
    | [<Mandatory>] Output_Dir of dir: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Checkpoint _ -> "model file; repeat to compare models (e.g. a ViT and an SF-MoE)"
            | Images _ -> "image files whose per-head maps are drawn"
            | Dataset _ -> "also average the redundancy over this dataset's images (and draw some when no image is given)"
            | Data_Dir _ -> "folder holding the datasets"
            | Max_Images _ -> "dataset images per environment (default 25)"
            | Samples _ -> "dataset images drawn when no image file is given (default 4)"
            | Block _ -> "block whose maps are drawn (default -1: the last; negative counts from the end)"
            | Threshold _ -> "DINO's mass threshold in (0, 1], e.g. 0.6: outline the fewest patches holding that share"
            | Batch_Size _ -> "images per forward pass (default 16)"
            | Seed _ -> "seed of the model's random choices (default 0)"
            | Device _ -> "cpu (default) or cuda"
            | Output_Dir _ -> "where the attention PNGs and redundancy.json/.md/.png go"

type CubKeypointsArgs =
    | [<Mandatory>] Cub_Dir of dir: string
    | [<Mandatory>] Output of file: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Cub_Dir _ -> "the CUB_200_2011 folder (images.txt, parts/parts.txt, parts/part_locs.txt, images/)"
            | Output _ -> "keypoints JSON to write (keys class/file.jpg, so every CUB-DG environment matches)"

type AnalyzeArgs =
    | [<CliPrefix(CliPrefix.None)>] Routing of ParseResults<RoutingArgs>
    | [<CliPrefix(CliPrefix.None)>] Attributes of ParseResults<AttributesArgs>
    | [<CliPrefix(CliPrefix.None)>] Attention of ParseResults<AttentionArgs>
    | [<CliPrefix(CliPrefix.None)>] Cub_Keypoints of ParseResults<CubKeypointsArgs>
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Routing _ -> "per sparse block: expert load, dropped tokens, router entropy and margin, usage per domain and class, expert maps"
            | Attributes _ -> "expert vs visual attribute: the top-1 experts of the patches nearest each keypoint"
            | Attention _ -> "the CLS token's attention per head over images, and head redundancy per block"
            | Cub_Keypoints _ -> "convert CUB-200-2011's part locations into a keypoints JSON"

type PlotArgs =
    | [<Mandatory>] Input_Dir of dir: string
    | Output_Dir of dir: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Input_Dir _ -> "a run folder or a folder of runs (every results.jsonl in it or below)"
            | Output_Dir _ -> "where the PNGs go (default: --input-dir)"

type ProfileArgs =
    | Model of name: string
    | Model_Config of file: string
    | Pattern of pattern: string
    | Batch_Size of n: int
    | Img_Size of n: int
    | Warmup of n: int
    | Repeats of n: int
    | Threads of n: int
    | Device of device: string
    | Precision of name: string
    | No_Timing
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "registry model (default sfmoe_test_patch8_32)"
            | Model_Config _ -> "model config JSON file"
            | Pattern _ -> "block pattern or preset overriding the model's"
            | Batch_Size _ -> "images per batch for the timings (default 8)"
            | Img_Size _ -> "input size (default: the model's)"
            | Warmup _ -> "untimed runs first (default 2)"
            | Repeats _ -> "timed runs, the two models interleaved; the median is reported (default 5)"
            | Threads _ -> "CPU threads (default: all cores)"
            | Device _ -> "cpu (default) or cuda"
            | Precision _ -> precisionUsage
            | No_Timing -> "only the closed-form numbers (parameters, MACs): no model is built"
            | Json -> "print {\"model\": {...}, \"dense_twin\": {...}}"

let private split (s: string option) =
    match s with
    | None -> "in"
    | Some("in" | "out" | "all" as s) -> s
    | Some s -> fail "--split must be in, out or all, got %s" s

let private log (s: string) = Console.Error.WriteLine(s)

let private printFiles (dir: string) (files: string seq) =
    let files = Seq.toList files
    Console.WriteLine(sprintf "%d files in %s:" files.Length dir)
    for f in files do Console.WriteLine("  " + IO.Path.GetFileName f)

let routing (a: ParseResults<RoutingArgs>) =
    let o =
        RoutingReportOptions(
            Checkpoint = a.GetResult RoutingArgs.Checkpoint,
            OutputDir = a.GetResult RoutingArgs.Output_Dir,
            Dataset = (a.TryGetResult RoutingArgs.Dataset |> Option.toObj),
            DataDir = (a.TryGetResult RoutingArgs.Data_Dir |> Option.toObj),
            Split = split (a.TryGetResult RoutingArgs.Split),
            MaxImages = positive "max-images" (a.GetResult(RoutingArgs.Max_Images, defaultValue = 200)),
            Samples = max 0 (a.GetResult(RoutingArgs.Samples, defaultValue = 2)),
            BatchSize = positive "batch-size" (a.GetResult(RoutingArgs.Batch_Size, defaultValue = 32)),
            TrialSeed = a.GetResult(RoutingArgs.Trial_Seed, defaultValue = 0),
            Seed = a.GetResult(RoutingArgs.Seed, defaultValue = 0L),
            Device = a.GetResult(RoutingArgs.Device, defaultValue = "cpu"))
    let r = RoutingReport.Run(o, Action<string> log)
    Console.WriteLine(sprintf "routing of %s on %s: %d images" r.Model r.Dataset r.Images)
    table Console.Out
        [ yield [ "block"; "dropped"; "entropy/lnE"; "margin"; "top-1 load per expert" ]
          for s in r.Blocks ->
              [ sprintf "blocks.%d" s.Block
                sprintf "%.3f" s.DroppedTokenFraction
                sprintf "%.3f" s.NormalizedEntropy
                sprintf "%.3f" s.Top1Margin
                String.Join(" ", s.Top1Load |> Array.map (sprintf "%.2f")) ] ]
    printFiles o.OutputDir r.Files
    0

let attributes (a: ParseResults<AttributesArgs>) =
    let o =
        AttributeReportOptions(
            Checkpoint = a.GetResult AttributesArgs.Checkpoint,
            OutputDir = a.GetResult AttributesArgs.Output_Dir,
            Dataset = (a.TryGetResult AttributesArgs.Dataset |> Option.toObj),
            DataDir = (a.TryGetResult AttributesArgs.Data_Dir |> Option.toObj),
            Keypoints = (a.TryGetResult AttributesArgs.Keypoints |> Option.toObj),
            ImageRoot = (a.TryGetResult AttributesArgs.Image_Root |> Option.toObj),
            Split = split (a.TryGetResult AttributesArgs.Split),
            MaxImages = positive "max-images" (a.GetResult(AttributesArgs.Max_Images, defaultValue = 200)),
            PatchesPerKeypoint = positive "patches-per-keypoint" (a.GetResult(AttributesArgs.Patches_Per_Keypoint, defaultValue = 9)),
            BatchSize = positive "batch-size" (a.GetResult(AttributesArgs.Batch_Size, defaultValue = 32)),
            TrialSeed = a.GetResult(AttributesArgs.Trial_Seed, defaultValue = 0),
            Seed = a.GetResult(AttributesArgs.Seed, defaultValue = 0L),
            Device = a.GetResult(AttributesArgs.Device, defaultValue = "cpu"))
    if o.Dataset <> null && o.ImageRoot <> null then fail "give --dataset or --image-root, not both"
    let r = AttributeReport.Run(o, Action<string> log)
    Console.WriteLine(sprintf "expert vs attribute of %s on %s: %d images, %d keypoints" r.Model r.Source r.Images r.KeypointCount)
    for b in r.Blocks do
        let h = b.Histogram
        let n = h.Normalized
        let seen = [ for i in 0 .. h.Attributes.Count - 1 do if h.KeypointCounts[i] > 0 then yield i ]
        // per expert, the attributes that send it the largest share of their patches
        let line e =
            let top = seen |> List.sortByDescending (fun i -> n[i, e]) |> List.truncate 3
            sprintf "e%d: %s" e (String.Join(", ", top |> List.map (fun i -> sprintf "%s %.2f" h.Attributes[i] n[i, e])))
        Console.WriteLine(sprintf "blocks.%d, attributes most routed to each expert:" b.Block)
        for e in 0 .. h.NumExperts - 1 do Console.WriteLine("  " + line e)
    printFiles o.OutputDir r.Files
    0

let attention (a: ParseResults<AttentionArgs>) =
    let threshold =
        a.TryGetResult AttentionArgs.Threshold
        |> Option.map (fun t -> if t > 0.0 && t <= 1.0 then t else fail "--threshold must be in (0, 1], got %g" t)
    let o =
        AttentionReportOptions(
            Checkpoints = ResizeArray(a.GetResults AttentionArgs.Checkpoint),
            OutputDir = a.GetResult AttentionArgs.Output_Dir,
            Images = ResizeArray(a.GetResult(AttentionArgs.Images, defaultValue = [])),
            Dataset = (a.TryGetResult AttentionArgs.Dataset |> Option.toObj),
            DataDir = (a.TryGetResult AttentionArgs.Data_Dir |> Option.toObj),
            MaxImages = positive "max-images" (a.GetResult(AttentionArgs.Max_Images, defaultValue = 25)),
            Samples = positive "samples" (a.GetResult(AttentionArgs.Samples, defaultValue = 4)),
            Block = a.GetResult(AttentionArgs.Block, defaultValue = -1),
            Threshold = Option.toNullable threshold,
            BatchSize = positive "batch-size" (a.GetResult(AttentionArgs.Batch_Size, defaultValue = 16)),
            Seed = a.GetResult(AttentionArgs.Seed, defaultValue = 0L),
            Device = a.GetResult(AttentionArgs.Device, defaultValue = "cpu"))
    let r = AttentionReport.Run(o, Action<string> log)
    Console.WriteLine(sprintf "head redundancy over %d images: mean pairwise cosine similarity / correlation of the heads' CLS maps (S sparse, F fusion block):" r.Images)
    let depth = r.Models |> Seq.map (fun m -> m.PerBlock.Length) |> Seq.max
    table Console.Out
        [ yield "block" :: [ for m in r.Models -> m.Model ]
          for b in 0 .. depth - 1 ->
              string b
              :: [ for m in r.Models ->
                       if b < m.PerBlock.Length then sprintf "%s %.3f / %.3f" m.Kinds[b] m.PerBlock[b] m.PatternPerBlock[b] else "" ] ]
    printFiles o.OutputDir r.Files
    0

let cubKeypoints (a: ParseResults<CubKeypointsArgs>) =
    let k = KeypointFile.FromCub(a.GetResult CubKeypointsArgs.Cub_Dir)
    let out = a.GetResult CubKeypointsArgs.Output
    k.Save out
    Console.WriteLine(sprintf "%d images with keypoints -> %s" k.Images.Count out)
    0

let plot (a: ParseResults<PlotArgs>) =
    let input = a.GetResult PlotArgs.Input_Dir
    let out = a.GetResult(PlotArgs.Output_Dir, defaultValue = input)
    let files = CurvesReport.Run(input, out, Action<string>(fun s -> Console.WriteLine s))
    printFiles out files
    0

type ProfileSideJson =
    { name: string
      pattern: string
      img_size: int
      total_params: int64
      active_params: int64
      total_macs: int64
      parts: ProfilePart seq
      timings: ProfileTimings }

let profile (a: ParseResults<ProfileArgs>) =
    a.TryGetResult ProfileArgs.Threads |> Option.iter (fun t -> torch.set_num_threads (positive "threads" t))
    let model = a.TryGetResult ProfileArgs.Model
    let file = a.TryGetResult ProfileArgs.Model_Config
    let configJson =
        file
        |> Option.map (fun p -> if IO.File.Exists p then IO.File.ReadAllText p else fail "model config %s: file not found" p)
    let model = if model.IsNone && file.IsNone then Some "sfmoe_test_patch8_32" else model
    if model.IsSome && file.IsSome then fail "give --model or --model-config, not both"
    let pattern = a.TryGetResult ProfileArgs.Pattern |> Option.toObj
    let img = a.TryGetResult ProfileArgs.Img_Size |> Option.map (positive "img-size") |> Option.toNullable
    let batch = positive "batch-size" (a.GetResult(ProfileArgs.Batch_Size, defaultValue = 8))
    let repeats = if a.Contains ProfileArgs.No_Timing then 0 else positive "repeats" (a.GetResult(ProfileArgs.Repeats, defaultValue = 5))
    let precision = precisionOf (a.GetResult(ProfileArgs.Precision, defaultValue = "fp32"))
    let r =
        ModelProfiler.Profile(Option.toObj model, Option.toObj configJson, pattern, img, batch,
                              max 0 (a.GetResult(ProfileArgs.Warmup, defaultValue = 2)), repeats,
                              a.GetResult(ProfileArgs.Device, defaultValue = "cpu"), precision)
    let m, t = r.Model, r.DenseTwin
    if a.Contains ProfileArgs.Json then
        let side (p: ModelProfile) =
            { name = p.Name; pattern = p.Pattern; img_size = p.ImageSize; total_params = p.TotalParameters
              active_params = p.ActiveParameters; total_macs = p.TotalMacs; parts = p.Parts; timings = p.Timings }
        let opts = Text.Json.JsonSerializerOptions(PropertyNamingPolicy = Text.Json.JsonNamingPolicy.SnakeCaseLower)
        Console.WriteLine(Text.Json.JsonSerializer.Serialize({| model = side m; dense_twin = side t |}, opts))
    else
        let mac (x: int64) = thousands x
        Console.WriteLine(sprintf "profile: %s (%s) and its dense twin (%s), %dx%d input" m.Name m.Pattern t.Pattern m.ImageSize m.ImageSize)
        Console.WriteLine()
        table Console.Out
            [ yield [ "part"; "kind"; "params"; "active/token"; "MACs/image"; "|"; "twin kind"; "twin params"; "twin MACs/image" ]
              for p, q in Seq.zip m.Parts t.Parts ->
                  [ p.Name; p.Kind; thousands p.Parameters; thousands p.ActiveParameters; mac p.Macs; "|"; q.Kind; thousands q.Parameters; mac q.Macs ]
              yield [ "total"; ""; thousands m.TotalParameters; thousands m.ActiveParameters; mac m.TotalMacs; "|"; ""; thousands t.TotalParameters; mac t.TotalMacs ] ]
        Console.WriteLine()
        let ratio (x: float) (y: float) = if y > 0.0 then sprintf "%.2fx" (x / y) else "-"
        let rows =
            [ yield [ ""; "model"; "dense twin"; "model / twin" ]
              yield [ "parameters"; thousands m.TotalParameters; thousands t.TotalParameters; ratio (float m.TotalParameters) (float t.TotalParameters) ]
              yield [ "active parameters per token"; thousands m.ActiveParameters; thousands t.ActiveParameters; ratio (float m.ActiveParameters) (float t.ActiveParameters) ]
              yield [ "MACs per image"; thousands m.TotalMacs; thousands t.TotalMacs; ratio (float m.TotalMacs) (float t.TotalMacs) ]
              match m.Timings, t.Timings with
              | null, _
              | _, null -> ()
              | x, y ->
                  yield [ sprintf "forward, eval (ms per batch of %d)" x.BatchSize; sprintf "%.1f" x.ForwardMs; sprintf "%.1f" y.ForwardMs; ratio x.ForwardMs y.ForwardMs ]
                  yield [ sprintf "train step (ms per batch of %d)" x.BatchSize; sprintf "%.1f" x.TrainStepMs; sprintf "%.1f" y.TrainStepMs; ratio x.TrainStepMs y.TrainStepMs ]
                  yield [ "peak memory (GB, process)"; sprintf "%.3f" x.PeakMemoryGb; sprintf "%.3f" y.PeakMemoryGb; ratio x.PeakMemoryGb y.PeakMemoryGb ]
                  yield [ "peak over baseline (GB)"; sprintf "%.3f" (x.PeakMemoryGb - x.BaselineMemoryGb); sprintf "%.3f" (y.PeakMemoryGb - y.BaselineMemoryGb)
                          ratio (x.PeakMemoryGb - x.BaselineMemoryGb) (y.PeakMemoryGb - y.BaselineMemoryGb) ] ]
        table Console.Out rows
        match m.Timings with
        | null -> ()
        | x -> Console.WriteLine(sprintf "\nmedians of %d runs after %d warm-up, %s, %s, %d threads; MACs: closed forms (a sparse block counts k experts per token)" repeats (max 0 (a.GetResult(ProfileArgs.Warmup, defaultValue = 2))) x.Device x.Precision x.Threads)
    0
