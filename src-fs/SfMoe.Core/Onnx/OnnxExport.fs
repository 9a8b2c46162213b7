/// A network to an ONNX model (one protobuf message, opset 17-21): input "images" (B, C, H, W) float32, already
/// resized and normalised, output "logits" (B, K); the batch is fixed or a symbolic "batch" dimension. Eval mode
/// throughout: no dropout, no gate noise, the eval capacity factor. Deterministic second-expert policies are exact;
/// the random one draws with RandomUniformLike (stochastic, as in the authors' eval) unless exported as the threshold
/// policy. The caller's metadata (preprocessing, classes) goes into metadata_props.
module SfMoe.Core.Onnx.OnnxExport

open System.IO
open TorchSharp
open SfMoe
open SfMoe.Core
open SfMoe.Core.Config
open SfMoe.Core.Onnx.Proto
open SfMoe.Core.Onnx.Graph

type Options =
    { /// ONNX opset of the default domain (minOpset .. maxOpset).
      Opset: int
      /// A fixed batch size, or None for a dynamic one.
      Batch: int option
      /// Serve the random second-expert policy as the threshold policy with the same threshold (deterministic).
      RandomAsThreshold: bool
      /// Add outputs routing.{i}.index (B, N, k) int64 and routing.{i}.kept (B, N, k) bool for each sparse block i.
      RoutingOutputs: bool }

let minOpset = 17
let maxOpset = 21
let defaults = { Opset = minOpset; Batch = None; RandomAsThreshold = false; RoutingOutputs = false }

let inputName = "images"
let outputName = "logits"
/// Value of the "format" metadata key.
let format = "sfmoe-onnx-1"

/// A protobuf message, and so an ONNX file without external data, holds at most 2 GiB.
let private maxBytes = 2147483647L

/// The second-expert policy the graph implements for a configured one.
let exportedPolicy (o: Options) (p: SecondPolicy) =
    match p with
    | SecondRandom t when o.RandomAsThreshold -> SecondThreshold t
    | p -> p

/// Whether the exported graph draws random numbers (a top-2 sparse block with the random policy).
let isStochastic (o: Options) (arch: Architecture) =
    match arch with
    | VitArch c ->
        c.Moe.TopK = 2
        && VitConfig.kinds c |> Array.contains Pattern.Sparse
        && (match exportedPolicy o c.Moe.SecondPolicy with SecondRandom _ -> true | _ -> false)
    | CnnArch _ -> false

/// Write the network as an ONNX model. ConfigException: options out of range; CheckpointException: a model ONNX
/// cannot hold.
let write (o: Options) (arch: Architecture) (net: Networks.Network) (metadata: (string * string) list) (out: Stream) : unit =
    if o.Opset < minOpset || o.Opset > maxOpset then
        Fail.config "ONNX opset %d is not supported: the exporter writes opsets %d to %d" o.Opset minOpset maxOpset
    match o.Batch with
    | Some b when b < 1 -> Fail.config "the batch size of an ONNX export must be >= 1, got %d" b
    | _ -> ()
    use scope = torch.NewDisposeScope()
    use _ = torch.no_grad ()
    let g = Graph(o.Opset)
    let batchDim = match o.Batch with Some b -> Known(int64 b) | None -> Symbolic "batch"
    let size = int64 (Architecture.imgSize arch)
    let chans = int64 (Architecture.inChans arch)
    let images = g.Input(inputName, DataType.float32, [ batchDim; Known chans; Known size; Known size ])
    let batch = match o.Batch with Some b -> Fixed(int64 b) | None -> g.Dim(images, 0)
    let logits, routing =
        match net with
        | Networks.VitNet v -> VitGraph.forward g v (exportedPolicy o) batch o.RoutingOutputs images
        | _ -> CnnGraph.forward g net images, []
    g.Output(logits, outputName, DataType.float32, [ batchDim; Known(int64 (Architecture.numClasses arch)) ])
    match arch with
    | VitArch c ->
        let n = int64 (VitConfig.numTokens c)
        for i, r in routing do
            let dims = [ batchDim; Known n; Known(int64 c.Moe.TopK) ]
            g.Output(r.Index, sprintf "routing.%d.index" i, DataType.int64, dims)
            g.Output(r.Kept, sprintf "routing.%d.kept" i, DataType.bool, dims)
    | CnnArch _ -> ()
    if g.InitializerBytes > maxBytes then
        Fail.checkpoint "the model's weights take %.2f GiB; an ONNX file holds at most 2 GiB (external data files are not written)"
            (float g.InitializerBytes / 1073741824.0)
    let doc =
        sprintf "SfMoe %s: %s (B, %d, %d, %d) float32, resized and normalised as the metadata says -> %s (B, %d)"
            (Architecture.backbone arch) inputName chans size size outputName (Architecture.numClasses arch)
    let meta =
        [ yield "format", format
          yield! metadata |> List.filter (fun (k, _) -> k <> "format" && k <> "stochastic")
          yield "stochastic", (if isStochastic o arch then "true" else "false") ]
    let version = typeof<Options>.Assembly.GetName().Version
    let model = g.Model("SfMoe", sprintf "%d.%d.%d" version.Major version.Minor version.Build, doc, meta)
    if Protobuf.size model > maxBytes then
        Fail.checkpoint "the ONNX model would take %.2f GiB; an ONNX file holds at most 2 GiB" (float (Protobuf.size model) / 1073741824.0)
    let buffered = new BufferedStream(out, 1 <<< 20)
    Protobuf.write buffered model
    buffered.Flush()
