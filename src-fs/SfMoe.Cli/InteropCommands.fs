/// `sfmoe import` and `sfmoe export`: pretrained weights from PyTorch checkpoints into SfMoe model files and back out,
/// over the C# API (SfMoe.Checkpoints.Pretrained).
module SfMoe.Cli.InteropCommands

open System
open System.IO
open Argu
open SfMoe
open SfMoe.Checkpoints
open SfMoe.Cli.Output

type ImportArgs =
    | [<Mandatory; AltCommandLine("-f")>] From of format: string
    | [<MainCommand; ExactlyOnce>] Input of file: string
    | [<Mandatory; AltCommandLine("-o")>] Output of file: string
    | Model of name: string
    | Model_Config of file: string
    | Num_Classes of n: int
    | Img_Size of n: int
    | Experts of mode: string
    | Normalization of name: string
    | Seed of n: int64
    | Verbose
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | From _ ->
                "checkpoint format: deit (torch.save {'model': state_dict}), timm (flat state dict, .safetensors or .pth), "
                + "augreg (Google's .npz, ViT and R26/R50 hybrids), sfmoe-dg (DomainBed model.pkl of the authors' SF-MoE code), "
                + "gmoe (the same with tutel MoE keys), torchvision (ResNet-50 for the ERM baseline)"
            | Input _ -> "the checkpoint file (PyTorch pickles are read without running any code in them)"
            | Output _ -> "the SfMoe model file to write (.safetensors with the model config, classes and mean/std in its header)"
            | Model _ -> "registry model to load into (sfmoe models), or resnet50; default: the checkpoint's own architecture"
            | Model_Config _ -> "model config JSON file to load into, instead of --model"
            | Num_Classes _ -> "classes of the head(s); a count other than the checkpoint's re-initialises them"
            | Img_Size _ -> "input size; another size than the checkpoint's resamples pos_embed bicubically (timm's resize_pos_embed)"
            | Experts _ ->
                "copy | random: the experts of blocks that are sparse in the model but dense in the checkpoint. copy: the dense FFN "
                + "in every expert (GMoE; the authors' hybrid .npz path too); random: the experts keep their init and the dense FFN "
                + "is dropped (what the authors' SF-MoE code does). Default: random for SF-MoE models (linear router, e.g. "
                + "sfmoe_small_patch16_224), copy for GMoE models (cosine router). Routers always start from their init"
            | Normalization _ ->
                "imagenet | inception: the input mean/std recorded in the model file. Default: what the weights expect (0.5/0.5 "
                + "for augreg .npz weights, ImageNet statistics otherwise; the authors' pipeline fed ImageNet statistics to the "
                + "augreg hybrid by mistake, --normalization imagenet reproduces that)"
            | Seed _ -> "seed of the init of whatever the checkpoint does not provide (heads, routers, experts); default 0"
            | Verbose -> "list every loaded and renamed key"
            | Json -> "print the report as JSON"

type ExportArgs =
    | [<Mandatory>] Checkpoint of file: string
    | [<Mandatory>] Format of format: string
    | [<Mandatory; AltCommandLine("-o")>] Output of file: string
    | Batch of size: string
    | Opset of n: int
    | Random_As_Threshold
    | Routing_Outputs
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Checkpoint _ -> "an SfMoe model file (sfmoe train's model.safetensors, or sfmoe import's output)"
            | Format _ ->
                "timm: .safetensors with timm's names (safetensors.torch.load_file); pytorch: a torch.save .pth of an "
                + "OrderedDict (torch.load). Both load with model.load_state_dict; MoE blocks keep the lucidrains layout "
                + "mlp.gate.w_gating [D,E], mlp.experts.w1 [E,D,H], mlp.experts.w2 [E,H,D]. "
                + "onnx: the eval-mode model as an ONNX graph for ONNX Runtime (SfMoe.Onnx, sfmoe predict --onnx), with "
                + "the preprocessing and class names in its metadata"
            | Output _ -> "the file to write"
            | Batch _ -> "onnx: dynamic (default) or a fixed batch size"
            | Opset _ -> sprintf "onnx: ONNX opset, %d (default) to %d" Core.Onnx.OnnxExport.minOpset Core.Onnx.OnnxExport.maxOpset
            | Random_As_Threshold ->
                "onnx: serve the random second-expert policy as the threshold policy (deterministic); without it the "
                + "graph draws with RandomUniformLike and its outputs vary from run to run"
            | Routing_Outputs -> "onnx: add outputs routing.{i}.index and routing.{i}.kept (B, N, k) for each sparse block"

type KeyReasonJson = { key: string; reason: string }
type MappingJson = { from: string; ``to``: string }
type ResampleJson = { key: string; from: int64[]; ``to``: int64[] }

type ReportJson =
    { input: string
      format: string
      output: string
      model: string
      loaded: string list
      renamed: MappingJson list
      resampled: ResampleJson list
      reinitialised: KeyReasonJson list
      upcycled: MappingJson list
      initialised: KeyReasonJson list
      ignored: KeyReasonJson list
      info: KeyReasonJson list
      notes: string list
      normalization: string
      mean: float32[]
      std: float32[] }

let import (a: ParseResults<ImportArgs>) =
    let input = a.GetResult ImportArgs.Input
    let output = a.GetResult ImportArgs.Output
    let format = a.GetResult ImportArgs.From
    let o = ImportOptions()
    o.Model <- a.TryGetResult ImportArgs.Model |> Option.toObj
    match a.TryGetResult ImportArgs.Model_Config with
    | Some path ->
        if o.Model <> null then fail "give --model or --model-config, not both"
        if not (File.Exists path) then fail "model config %s: file not found" path
        o.ModelConfigJson <- File.ReadAllText path
    | None -> ()
    o.NumClasses <- a.TryGetResult ImportArgs.Num_Classes |> Option.map (fun k -> if k < 1 then fail "--num-classes must be >= 1, got %d" k else k) |> Option.toNullable
    o.ImageSize <- a.TryGetResult ImportArgs.Img_Size |> Option.map (fun s -> if s < 1 then fail "--img-size must be >= 1, got %d" s else s) |> Option.toNullable
    o.Experts <-
        a.TryGetResult ImportArgs.Experts
        |> Option.map (choice "--experts" experts)
        |> Option.toNullable
    o.Normalization <-
        match a.TryGetResult ImportArgs.Normalization with
        | Some("imagenet" | "inception" as n) -> n
        | Some n -> fail "--normalization must be imagenet or inception, got %s" n
        | None -> null
    o.Seed <- a.GetResult(ImportArgs.Seed, defaultValue = 0L)
    let r = Pretrained.Import(input, format, output, o)
    let h = r.Header
    let rep = r.Report
    if a.Contains ImportArgs.Json then
        let kr (xs: KeyNote seq) = [ for x in xs -> { key = x.Key; reason = x.Reason } ]
        let mp (xs: KeyMapping seq) = [ for x in xs -> { from = x.From; ``to`` = x.To } ]
        Console.WriteLine(
            json
                { input = input; format = format; output = output; model = r.Model
                  loaded = List.ofSeq rep.Loaded; renamed = mp rep.Renamed
                  resampled = [ for x in rep.Resampled -> { key = x.Key; from = x.From; ``to`` = x.To } ]
                  reinitialised = kr rep.Reinitialised; upcycled = mp rep.Upcycled; initialised = kr rep.Initialised
                  ignored = kr rep.Ignored; info = kr rep.Info; notes = List.ofSeq rep.Notes
                  normalization = rep.NormalizationName; mean = h.Mean; std = h.Std })
    else
        Console.WriteLine(sprintf "read %s (%s)" input format)
        let shape =
            match h.ModelConfigJson with
            | null -> sprintf "%s, %d classes" h.Backbone h.NumClasses
            | js ->
                let c = Core.ConfigJson.parse Core.Registry.tryCreate js
                sprintf "pattern %s, %d classes, %dx%d input%s" (Core.Pattern.print c.Pattern) c.NumClasses c.ImgSize c.ImgSize
                    (if c.Hybrid.IsSome then ", hybrid (ResNetV2 stem)" else "")
        Console.WriteLine(sprintf "model: %s (%s)" r.Model shape)
        for line in rep.Lines(a.Contains ImportArgs.Verbose, "--verbose lists them") do
            Console.WriteLine line
        let f (xs: float32[]) = String.Join(", ", xs |> Array.map (fun x -> x.ToString("0.###", Globalization.CultureInfo.InvariantCulture)))
        Console.WriteLine(sprintf "normalization: %s (mean %s; std %s)" rep.NormalizationName (f h.Mean) (f h.Std))
        Console.WriteLine(sprintf "wrote %s" output)
    0

let export (a: ParseResults<ExportArgs>) =
    let checkpoint = a.GetResult ExportArgs.Checkpoint
    let format = a.GetResult ExportArgs.Format
    let output = a.GetResult ExportArgs.Output
    if String.Equals(format.Trim(), "onnx", StringComparison.OrdinalIgnoreCase) then
        OnnxCommands.export checkpoint output (a.TryGetResult ExportArgs.Batch) (a.TryGetResult ExportArgs.Opset)
            (a.Contains ExportArgs.Random_As_Threshold) (a.Contains ExportArgs.Routing_Outputs)
    else
        for flag, given in [ "--batch", a.Contains ExportArgs.Batch; "--opset", a.Contains ExportArgs.Opset
                             "--random-as-threshold", a.Contains ExportArgs.Random_As_Threshold
                             "--routing-outputs", a.Contains ExportArgs.Routing_Outputs ] do
            if given then fail "%s applies to --format onnx only" flag
        Pretrained.Export(checkpoint, format, output)
        Console.WriteLine(sprintf "wrote %s (%s)" output format)
        0
