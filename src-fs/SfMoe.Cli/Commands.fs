/// The CLI's commands: argument schemas (Argu) and their implementations over the C# host's public API.
module SfMoe.Cli.Commands

open System
open System.Diagnostics
open Argu
open TorchSharp
open SfMoe
open SfMoe.Cli.Output

type PatternArgs =
    | [<MainCommand; ExactlyOnce>] Pattern of pattern: string
    | Depth of n: int
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Pattern _ -> "a block pattern such as \"[S,F]x6\", \"Fx5,S,Fx5,S\", \"SFSF\", or a preset (sfmoe, sfmoe-dg, gmoe, vit)"
            | Depth _ -> "check that the pattern has exactly this many blocks"
            | Json -> "print {\"pattern\": ..., \"blocks\": [...]}"

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

type Command =
    | [<CliPrefix(CliPrefix.None)>] Pattern of ParseResults<PatternArgs>
    | [<CliPrefix(CliPrefix.None)>] Models of ParseResults<ModelsArgs>
    | [<CliPrefix(CliPrefix.None)>] Summary of ParseResults<SummaryArgs>
    | [<AltCommandLine("-V")>] Version
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Pattern _ -> "parse a block pattern: canonical form and expanded block kinds"
            | Models _ -> "list the model registry"
            | Summary _ -> "build a model, run it on a random batch, print its block layout and output shape"
            | Version -> "print the version"

/// JSON shape of `sfmoe pattern --json` (field order as documented).
type PatternJson = { pattern: string; blocks: string seq }

let private positive name (v: int) = if v < 1 then fail "--%s must be >= 1, got %d" name v else v

let pattern (a: ParseResults<PatternArgs>) =
    let text = a.GetResult PatternArgs.Pattern
    let info =
        match a.TryGetResult PatternArgs.Depth with
        | Some d -> Patterns.Parse(text, positive "depth" d)
        | None -> Patterns.Parse text
    if a.Contains PatternArgs.Json then
        Console.WriteLine(json { pattern = info.Canonical; blocks = info.Blocks })
    else
        Console.WriteLine("pattern: " + info.Canonical)
        Console.WriteLine(sprintf "blocks (%d): %s" info.Depth (String.Join(" ", info.Blocks)))
        let sparse = info.Blocks |> Seq.indexed |> Seq.filter (fun (_, k) -> k = "S") |> Seq.map (fst >> string) |> Seq.toList
        Console.WriteLine("sparse blocks (0-based): " + (if sparse.IsEmpty then "none" else String.Join(", ", sparse)))
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
