/// Pretrained checkpoints from the PyTorch world, read into memory under SfMoe's names (renames: ImportKeys).
///
/// Formats (what the file is; SfMoe's ViT names are timm's):
///   deit        torch.save({'model': state_dict}) as DeiT releases it (distilled or not); a flat state dict is accepted
///   timm        a flat state dict: .safetensors or torch.save .pth (a 'state_dict'/'model' wrapper and a DDP 'module.'
///               prefix are removed)
///   augreg      Google's .npz (ViT and R26/R50+ViT hybrids)
///   sfmoe-dg    DomainBed's model.pkl from the authors' code: {'model_dict': algorithm.state_dict(), 'args': dict,
///               'model_hparams', 'model_num_classes', 'model_input_shape', 'model_num_domains'}; an ERM ResNet-50
///               (featurizer.*, classifier.*) is read too
///   gmoe        the same container (or a flat state dict) with tutel MoE keys
///   torchvision a ResNet-50 state dict (torchvision names) for the ERM baseline
/// The readers work on streams: the host opens the file and passes its path as the name that starts every message.
module SfMoe.Core.ImportSource

open System
open System.IO
open TorchSharp
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Pickle
open SfMoe.Core.ImportKeys

open SfMoe

let private fail fmt = Fail.checkpoint fmt

type Format =
    | Deit
    | Timm
    | Augreg
    | SfMoeDg
    | GMoe
    | Torchvision

module Format =
    let all = [ "deit", Deit; "timm", Timm; "augreg", Augreg; "sfmoe-dg", SfMoeDg; "gmoe", GMoe; "torchvision", Torchvision ]
    let name (f: Format) = all |> List.find (fun (_, x) -> x = f) |> fst
    let tryParse (s: string) =
        all |> List.tryFind (fun (n, _) -> String.Equals(n, (if isNull s then "" else s.Trim()), StringComparison.OrdinalIgnoreCase)) |> Option.map snd
    let names = String.Join(", ", all |> List.map fst)

/// Input normalisation (mean, std per channel) that a set of weights expects.
type Normalization = { Name: string; Mean: float32[]; Std: float32[] }

module Normalization =
    /// ImageNet statistics: DeiT, timm's ImageNet models, torchvision, and DomainBed's pipeline (for every model).
    let imagenet = { Name = "imagenet"; Mean = [| 0.485f; 0.456f; 0.406f |]; Std = [| 0.229f; 0.224f; 0.225f |] }
    /// mean = std = 0.5: Google's ViT/augreg weights (timm's "inception" constants).
    let inception = { Name = "inception"; Mean = [| 0.5f; 0.5f; 0.5f |]; Std = [| 0.5f; 0.5f; 0.5f |] }
    let tryParse (s: string) =
        match (if isNull s then "" else s.Trim().ToLowerInvariant()) with
        | "imagenet" -> Some imagenet
        | "inception" | "0.5" -> Some inception
        | _ -> None

/// A checkpoint in memory under SfMoe's names. Dispose it to free the tensors.
type Source =
    { /// The name given to `read` (the file's path), which starts the messages about the file.
      Name: string
      Format: Format
      /// Tensors under SfMoe's names (timm names for a ViT; featurizer.network.* / classifier.* for the ResNet-50).
      Tensors: (string * Tensor) list
      /// Checkpoint name -> SfMoe name, where they differ.
      Renamed: (string * string) list
      /// Checkpoint entries not used, with the reason.
      Ignored: (string * string) list
      /// What else the file holds (DomainBed's args, hparams, ...), summarised.
      Info: (string * string) list
      /// A model the file states (DomainBed's algorithm, SfMoe's export metadata), when it does.
      Config: VitConfig option
      /// The file is a ResNet-50 (torchvision or DomainBed ERM), not a ViT.
      IsResNet: bool
      /// The normalisation these weights expect.
      Normalization: Normalization
      /// DomainBed's dataset and algorithm, when the file says.
      Dataset: string option
      Algorithm: string option }
    interface IDisposable with
        member this.Dispose() =
            for _, t in this.Tensors do t.Dispose()

// ---- Reading --------------------------------------------------------------------------------------------------------

/// A short description of a Python value for the report.
let rec private short (depth: int) (v: PyValue) : string =
    match v with
    | PyNone -> "None"
    | PyBool b -> if b then "True" else "False"
    | PyInt i -> string i
    | PyFloat f -> f.ToString("R", Globalization.CultureInfo.InvariantCulture)
    | PyStr s -> if s.Length > 60 then "'" + s.Substring(0, 57) + "...'" else "'" + s + "'"
    | PyBytes b -> sprintf "bytes[%d]" b.Length
    | PyTuple xs when depth < 2 && xs.Length <= 6 -> "(" + String.Join(", ", xs |> Array.map (short (depth + 1))) + ")"
    | PyList xs when depth < 2 && xs.Count <= 6 -> "[" + String.Join(", ", xs |> Seq.map (short (depth + 1))) + "]"
    | PyTuple xs -> sprintf "tuple of %d" xs.Length
    | PyList xs -> sprintf "list of %d" xs.Count
    | PyDict d -> sprintf "%s of %d entries" (describe v) d.Count
    | PyTensor t -> sprintf "tensor [%s]" (String.Join(", ", t.Size))
    | v -> describe v

let private strOf (v: PyValue option) =
    match v with
    | Some(PyStr s) -> Some s
    | _ -> None

/// True when the (seekable) stream starts as a safetensors file (u64 header length, then '{').
let private isSafetensors (s: Stream) =
    let b = Streams.head s 9
    b.Length = 9 && b[8] = byte '{' && BitConverter.ToUInt64(b, 0) < uint64 s.Length

/// The tensors of a state dict held in a torch.save file (every value must be a tensor).
let private stateDictOf (ck: TorchFile.Checkpoint) (what: string) (v: PyValue) : (string * Tensor) list =
    match v with
    | PyDict d ->
        let out = ResizeArray()
        try
            for k, x in d.Items do
                match k, x with
                | PyStr key, PyTensor t -> out.Add((key, ck.Tensor t))
                | PyStr key, other -> fail "%s: %s holds %s under %s; a state dict holds tensors only" ck.Name what (describe other) key
                | k, _ -> fail "%s: %s has a key of type %s" ck.Name what (describe k)
            List.ofSeq out
        with _ ->
            disposeAll out
            reraise ()
    | v -> fail "%s: %s is %s, not a state dict" ck.Name what (describe v)

/// All entries of a dict are tensors.
let private isTensorDict (v: PyValue) =
    match v with
    | PyDict d -> d.Count > 0 && d.Items |> Seq.forall (fun (k, x) -> (match k with PyStr _ -> true | _ -> false) && (match x with PyTensor _ -> true | _ -> false))
    | _ -> false

/// Read a flat state dict from .safetensors or a torch.save file; `wrappers` are keys that may hold it.
let private readFlat (name: string) (stream: Stream) (wrappers: string list) : (string * Tensor) list * (string * string) list * Map<string, string> =
    if isSafetensors stream then
        let c = SafeTensors.read name stream
        c.Tensors, [], c.Metadata
    else
        use ck = TorchFile.read name stream
        match ck.Root with
        | v when isTensorDict v -> stateDictOf ck "the state dict" v, [], Map.empty
        | PyDict d ->
            match wrappers |> List.tryFind (fun w -> (d.TryFind w).IsSome) with
            | Some w ->
                let others = [ for k, x in d.Items do if k <> PyStr w then yield (match k with PyStr s -> s | k -> describe k), short 0 x ]
                stateDictOf ck (sprintf "'%s'" w) (d.TryFind w).Value, others, Map.empty
            | None ->
                let keys = String.Join(", ", d.Keys |> Seq.truncate 8 |> Seq.map (short 1))
                fail "%s: no state dict found: the file holds a dict with keys %s (expected tensors%s)" name keys
                    (if wrappers.IsEmpty then "" else ", or a state dict under " + String.Join(" or ", wrappers |> List.map (sprintf "'%s'")))
        | v -> fail "%s: the file holds %s, not a state dict" name (describe v)

/// DomainBed's model.pkl ({'model_dict': ..., 'args': ..., ...}); a flat state dict is accepted as well.
let private readDomainBed (name: string) (stream: Stream) =
    if isSafetensors stream then
        let ts, others, _ = readFlat name stream []
        ts, others, None, None, None
    else
        use ck = TorchFile.read name stream
        match ck.Root with
        | PyDict d when (d.TryFind "model_dict").IsSome ->
            let info = [ for k, v in d.Items do if k <> PyStr "model_dict" then yield (match k with PyStr s -> s | k -> describe k), short 0 v ]
            let args =
                match d.TryFind "args" with
                | Some(PyDict a) -> Some a
                | _ -> None
            let algorithm = args |> Option.bind (fun a -> strOf (a.TryFind "algorithm"))
            let dataset = args |> Option.bind (fun a -> strOf (a.TryFind "dataset"))
            let classes =
                match d.TryFind "model_num_classes" with
                | Some(PyInt k) -> Some(int k)
                | _ -> None
            let tensors = stateDictOf ck "model_dict" (d.TryFind "model_dict").Value
            tensors, info, algorithm, dataset, classes
        | v when isTensorDict v -> stateDictOf ck "the state dict" v, [], None, None, None
        | PyDict d ->
            let keys = String.Join(", ", d.Keys |> Seq.truncate 8 |> Seq.map (short 1))
            fail "%s: neither a DomainBed model.pkl (no 'model_dict') nor a state dict (keys: %s)" name keys
        | v -> fail "%s: not a DomainBed model.pkl: the file holds %s" name (describe v)

/// Read a checkpoint of the given format from `stream` (from offset 0 when it can seek) into SfMoe names; `name` (the
/// file's path) starts every message. The source holds its own tensors: the stream may be closed afterwards.
let read (format: Format) (name: string) (stream: Stream) : Source =
    let stream = Streams.seekable stream
    let baseSource =
        { Name = name; Format = format; Tensors = []; Renamed = []; Ignored = []; Info = []; Config = None; IsResNet = false
          Normalization = Normalization.imagenet; Dataset = None; Algorithm = None }
    let fromMeta (meta: Map<string, string>) =
        match meta.TryFind "sfmoe_model_config" with
        | Some json ->
            try Some(ConfigJson.parse Registry.tryCreate json)
            with :? ConfigException as e -> fail "%s: its sfmoe_model_config metadata is invalid: %s" name e.Message
        | None -> None
    match format with
    | Deit ->
        let ts, others, _ = readFlat name stream [ "model" ]
        let ts, renamed = stripCommonPrefix "module." ts
        { baseSource with Tensors = ts; Renamed = renamed; Info = others }
    | Timm ->
        let ts, others, meta = readFlat name stream [ "state_dict"; "model" ]
        let ts, renamed = stripCommonPrefix "module." ts
        { baseSource with Tensors = ts; Renamed = renamed; Info = others; Config = fromMeta meta }
    | Torchvision ->
        let ts, others, _ = readFlat name stream [ "state_dict"; "model" ]
        let ts, _ = stripCommonPrefix "module." ts
        let ts, renamed = fromTorchvision ts
        { baseSource with Tensors = ts; Renamed = renamed; Info = others; IsResNet = true }
    | Augreg ->
        let arrays = Npz.read name stream
        try
            let ts, renamed, ignored = fromAugreg name arrays
            { baseSource with Tensors = ts; Renamed = renamed; Ignored = ignored; Normalization = Normalization.inception }
        finally
            disposeAll arrays
    | SfMoeDg | GMoe ->
        let ts, info, algorithm, dataset, classes = readDomainBed name stream
        let isResNet = ts |> List.exists (fun (n, _) -> n.StartsWith "featurizer.network.")
        let ts, renamed, ignored =
            if isResNet then
                let keep, ign = fromDomainBedResNet ts
                keep, [], ign
            else
                let ts, renamed = stripCommonPrefix "model." ts
                if format = GMoe then fromTutel (not renamed.IsEmpty) ts
                else ts, renamed, []
        let cfg =
            match algorithm |> Option.bind (fun a -> algorithmModels |> List.tryFind (fun (n, _) -> n = a)) with
            | Some(_, model) ->
                Registry.tryCreate model |> Result.toOption |> Option.map (fun c ->
                    match classes with
                    | Some k -> { c with NumClasses = k }
                    | None -> c)
            | None -> None
        { baseSource with
            Tensors = ts; Renamed = renamed; Ignored = ignored; Info = info; Config = cfg; IsResNet = isResNet
            Dataset = dataset; Algorithm = algorithm }
