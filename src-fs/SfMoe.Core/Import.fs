/// Pretrained weights from the PyTorch world into SfMoe networks, with every key accounted for.
///
/// Formats (what the file is and how its names become SfMoe's; SfMoe's ViT names are timm's):
///   deit        torch.save({'model': state_dict}) as DeiT releases it (distilled or not); a flat state dict is accepted
///   timm        a flat state dict: .safetensors or torch.save .pth (a 'state_dict'/'model' wrapper and a DDP 'module.'
///               prefix are removed)
///   augreg      Google's .npz (ViT and R26/R50+ViT hybrids): HWIO kernels to OIHW, (in, out) kernels transposed,
///               query/key/value (D, heads, hd) kernels flattened and concatenated into qkv, out (heads, hd, D) into
///               proj, the ResNet stem's conv_root/gn_root/block{i}/unit{j} into patch_embed.backbone.* (timm's
///               _load_weights); an 'opt/target/' prefix is removed, pre_logits is ignored
///   sfmoe-dg    DomainBed's model.pkl from the authors' code: {'model_dict': algorithm.state_dict(), 'args': dict,
///               'model_hparams', 'model_num_classes', 'model_input_shape', 'model_num_domains'}; 'model.' prefixes are
///               removed; MoE keys are lucidrains' = SfMoe's (gate.w_gating [D,E], experts.w1 [E,D,H], w2 [E,H,D]);
///               an ERM ResNet-50 (featurizer.*, classifier.*) is read too
///   gmoe        the same container (or a flat state dict) with tutel MoE keys, mapped by KeyMap.fromAuthors
///   torchvision a ResNet-50 state dict (torchvision names) for the ERM baseline: featurizer.network.* and classifier.*
///
/// Loading (`loadInto`): a key of the network is loaded when the checkpoint has it with the same shape; pos_embed is
/// resampled bicubically when the grid differs (timm's resize_pos_embed); the head(s) are re-initialised when the class
/// count differs; the dense FFN of a block that is sparse in the network is copied into every expert (CopyDense) or
/// dropped (KeepInit, the experts keep their init); routers always keep their init. Anything else (a key missing from
/// the checkpoint, a checkpoint key the network lacks, a shape that differs) is an error naming the key and shapes.
module SfMoe.Core.Import

open System
open System.IO
open System.Text.RegularExpressions
open TorchSharp
open SfMoe.Core.Tensors
open SfMoe.Core.Pattern
open SfMoe.Core.Config
open SfMoe.Core.Pickle

open SfMoe

let private fail fmt = Printf.ksprintf (fun s -> raise (CheckpointException s)) fmt

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
    { Path: string
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

// ------------------------------------------------------------------------------------------------------------------
// Reading
// ------------------------------------------------------------------------------------------------------------------

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

/// True when the file starts as a safetensors file (u64 header length, then '{').
let isSafetensors (path: string) =
    use fs = File.OpenRead path
    let b = Array.zeroCreate<byte> 9
    fs.Read(b, 0, 9) = 9 && b[8] = byte '{' && BitConverter.ToUInt64(b, 0) < uint64 fs.Length

let private disposeAll (ts: (string * Tensor) seq) = for _, t in ts do t.Dispose()

/// The tensors of a state dict held in a torch.save file (every value must be a tensor).
let private stateDictOf (ck: TorchFile.Checkpoint) (what: string) (v: PyValue) : (string * Tensor) list =
    match v with
    | PyDict d ->
        let out = ResizeArray()
        try
            for k, x in d.Items do
                match k, x with
                | PyStr name, PyTensor t -> out.Add((name, ck.Tensor t))
                | PyStr name, other -> fail "%s: %s holds %s under %s; a state dict holds tensors only" ck.Path what (describe other) name
                | k, _ -> fail "%s: %s has a key of type %s" ck.Path what (describe k)
            List.ofSeq out
        with _ ->
            disposeAll out
            reraise ()
    | v -> fail "%s: %s is %s, not a state dict" ck.Path what (describe v)

/// All entries of a dict are tensors.
let private isTensorDict (v: PyValue) =
    match v with
    | PyDict d -> d.Count > 0 && d.Items |> Seq.forall (fun (k, x) -> (match k with PyStr _ -> true | _ -> false) && (match x with PyTensor _ -> true | _ -> false))
    | _ -> false

/// A torch.save file (its reader's and unpickler's errors are CheckpointExceptions already).
let private readTorch (path: string) = TorchFile.read path

/// Read a flat state dict from .safetensors or a torch.save file; `wrappers` are keys that may hold it.
let private readFlat (path: string) (wrappers: string list) : (string * Tensor) list * (string * string) list * Map<string, string> =
    if isSafetensors path then
        let c = SafeTensors.read path
        c.Tensors, [], c.Metadata
    else
        use ck = readTorch path
        match ck.Root with
        | v when isTensorDict v -> stateDictOf ck "the state dict" v, [], Map.empty
        | PyDict d ->
            match wrappers |> List.tryFind (fun w -> (d.TryFind w).IsSome) with
            | Some w ->
                let others = [ for k, x in d.Items do if k <> PyStr w then yield (match k with PyStr s -> s | k -> describe k), short 0 x ]
                stateDictOf ck (sprintf "'%s'" w) (d.TryFind w).Value, others, Map.empty
            | None ->
                let keys = String.Join(", ", d.Keys |> Seq.truncate 8 |> Seq.map (short 1))
                fail "%s: no state dict found: the file holds a dict with keys %s (expected tensors%s)" path keys
                    (if wrappers.IsEmpty then "" else ", or a state dict under " + String.Join(" or ", wrappers |> List.map (sprintf "'%s'")))
        | v -> fail "%s: the file holds %s, not a state dict" path (describe v)

/// Remove a prefix that every key has (DDP's "module.").
let private stripCommonPrefix (prefix: string) (ts: (string * Tensor) list) =
    if not ts.IsEmpty && ts |> List.forall (fun (n, _) -> n.StartsWith prefix) then
        ts |> List.map (fun (n, t) -> n.Substring prefix.Length, t), ts |> List.map (fun (n, _) -> n, n.Substring prefix.Length)
    else ts, []

// ---- augreg (.npz) -------------------------------------------------------------------------------------------------

let private blockRx = Regex(@"^Transformer/encoderblock_(\d+)/(.+)$")
let private unitRx = Regex(@"^block(\d+)/unit(\d+)/(conv[123]|gn[123]|conv_proj|gn_proj)/(kernel|scale|bias)$")

/// Google's names to timm's (timm v0.5.4 vision_transformer._load_weights), with every key accounted for.
let private fromAugreg (path: string) (arrays: (string * Tensor) list) =
    let prefix = if arrays |> List.exists (fun (n, _) -> n = "opt/target/embedding/kernel") then "opt/target/" else ""
    let src = dict [ for n, t in arrays do if n.StartsWith prefix then yield n.Substring prefix.Length, t ]
    let used = Collections.Generic.HashSet<string>()
    let out = ResizeArray<string * Tensor>()
    let renamed = ResizeArray<string * string>()
    let ignored = ResizeArray<string * string>()
    let get (k: string) =
        match src.TryGetValue k with
        | true, t ->
            used.Add k |> ignore
            t
        | _ -> fail "%s: the .npz lacks %s%s" path prefix k
    let emit (from: string) (name: string) (t: Tensor) =
        out.Add((name, t))
        renamed.Add((prefix + from, name))
    let hwio (t: Tensor) = t.permute(3L, 2L, 0L, 1L).contiguous () // HWIO -> OIHW
    let vec (t: Tensor) = t.reshape(-1L) // GroupNorm scales may be (1, 1, 1, C)
    let has k = src.ContainsKey k
    try
        // Patch embedding, tokens, final norm, head.
        emit "embedding/kernel" "patch_embed.proj.weight" (hwio (get "embedding/kernel"))
        emit "embedding/bias" "patch_embed.proj.bias" ((get "embedding/bias").clone ())
        emit "cls" "cls_token" ((get "cls").clone ())
        emit "Transformer/posembed_input/pos_embedding" "pos_embed" ((get "Transformer/posembed_input/pos_embedding").clone ())
        emit "Transformer/encoder_norm/scale" "norm.weight" ((get "Transformer/encoder_norm/scale").clone ())
        emit "Transformer/encoder_norm/bias" "norm.bias" ((get "Transformer/encoder_norm/bias").clone ())
        let preLogits = has "pre_logits/kernel"
        if has "head/kernel" && not preLogits then
            emit "head/kernel" "head.weight" ((get "head/kernel").t().contiguous ())
            emit "head/bias" "head.bias" ((get "head/bias").clone ())
        for k in [ "pre_logits/kernel"; "pre_logits/bias"; "head/kernel"; "head/bias" ] do
            if preLogits && has k then
                used.Add k |> ignore
                if k.StartsWith "pre_logits" then
                    ignored.Add((prefix + k, "pre-logits (representation) layer: SfMoe's ViT has none; timm drops it when fine-tuning"))
                else
                    ignored.Add((prefix + k, "head of a model with a pre-logits layer: not valid without it, so the head is re-initialised (timm's fine-tuning behaviour)"))
        // Hybrid stem.
        if has "conv_root/kernel" then
            let b = "patch_embed.backbone."
            emit "conv_root/kernel" (b + "stem.conv.weight") (hwio (get "conv_root/kernel"))
            emit "gn_root/scale" (b + "stem.norm.weight") ((vec (get "gn_root/scale")).clone ())
            emit "gn_root/bias" (b + "stem.norm.bias") ((vec (get "gn_root/bias")).clone ())
            for KeyValue(k, t) in src |> Seq.sortBy (fun kv -> kv.Key) do
                let m = unitRx.Match k
                if m.Success then
                    let stage, blk = int m.Groups[1].Value - 1, int m.Groups[2].Value - 1
                    let layer, kind = m.Groups[3].Value, m.Groups[4].Value
                    let p = sprintf "%sstages.%d.blocks.%d." b stage blk
                    let name =
                        match layer, kind with
                        | "conv_proj", "kernel" -> p + "downsample.conv.weight"
                        | "gn_proj", "scale" -> p + "downsample.norm.weight"
                        | "gn_proj", "bias" -> p + "downsample.norm.bias"
                        | c, "kernel" when c.StartsWith "conv" -> p + c + ".weight"
                        | g, "scale" when g.StartsWith "gn" -> p + "norm" + g.Substring 2 + ".weight"
                        | g, "bias" when g.StartsWith "gn" -> p + "norm" + g.Substring 2 + ".bias"
                        | _ -> fail "%s: unexpected key %s%s" path prefix k
                    used.Add k |> ignore
                    emit k name (if kind = "kernel" then hwio t else (vec t).clone ())
        // Transformer blocks.
        let blocks =
            src.Keys |> Seq.choose (fun k -> let m = blockRx.Match k in if m.Success then Some(int m.Groups[1].Value) else None) |> Seq.distinct |> Seq.sort |> List.ofSeq
        for i in blocks do
            let bp = sprintf "Transformer/encoderblock_%d/" i
            let tp = sprintf "blocks.%d." i
            let mha = bp + "MultiHeadDotProductAttention_1/"
            emit (bp + "LayerNorm_0/scale") (tp + "norm1.weight") ((get (bp + "LayerNorm_0/scale")).clone ())
            emit (bp + "LayerNorm_0/bias") (tp + "norm1.bias") ((get (bp + "LayerNorm_0/bias")).clone ())
            emit (bp + "LayerNorm_2/scale") (tp + "norm2.weight") ((get (bp + "LayerNorm_2/scale")).clone ())
            emit (bp + "LayerNorm_2/bias") (tp + "norm2.bias") ((get (bp + "LayerNorm_2/bias")).clone ())
            // query/key/value kernels (D, heads, hd) -> rows of qkv.weight (3D, D); biases (heads, hd) -> (3D).
            let qkvW =
                [| for n in [ "query"; "key"; "value" ] ->
                       let k = get (mha + n + "/kernel")
                       k.flatten(1L).t () |]
            let qkvB = [| for n in [ "query"; "key"; "value" ] -> (get (mha + n + "/bias")).reshape(-1L) |]
            out.Add((tp + "attn.qkv.weight", torch.cat(qkvW, 0L)))
            out.Add((tp + "attn.qkv.bias", torch.cat(qkvB, 0L)))
            for t in Array.append qkvW qkvB do t.Dispose()
            for n in [ "query"; "key"; "value" ] do
                renamed.Add((prefix + mha + n + "/kernel", tp + "attn.qkv.weight"))
                renamed.Add((prefix + mha + n + "/bias", tp + "attn.qkv.bias"))
            // out kernel (heads, hd, D) -> proj.weight (D, heads*hd).
            let o = get (mha + "out/kernel")
            emit (mha + "out/kernel") (tp + "attn.proj.weight") (o.reshape(-1L, o.shape[int o.ndim - 1]).t().contiguous ())
            emit (mha + "out/bias") (tp + "attn.proj.bias") ((get (mha + "out/bias")).clone ())
            for r in 0 .. 1 do
                let d = sprintf "%sMlpBlock_3/Dense_%d/" bp r
                emit (d + "kernel") (sprintf "%smlp.fc%d.weight" tp (r + 1)) ((get (d + "kernel")).t().contiguous ())
                emit (d + "bias") (sprintf "%smlp.fc%d.bias" tp (r + 1)) ((get (d + "bias")).clone ())
        // Every key is accounted for.
        for n, _ in arrays do
            if not (n.StartsWith prefix) then ignored.Add((n, "not under opt/target/ (optimizer or training state)"))
            elif not (used.Contains(n.Substring prefix.Length)) then fail "%s: unexpected key %s in the .npz (not a ViT or R26/R50 hybrid checkpoint?)" path n
        List.ofSeq out, List.ofSeq renamed, List.ofSeq ignored
    with _ ->
        disposeAll out
        reraise ()

// ---- DomainBed model.pkl -------------------------------------------------------------------------------------------

/// DomainBed's algorithm names and the registry model of each (the authors' constructors).
let private algorithmModels =
    [ "SFMOE", "sfmoe_small_patch16_224"
      "HybridSFMOE", "hybrid_sfmoe_small_r26_s32_224"
      "HybridVIT", "vit_small_r26_s32_224"
      "GMOE", "gmoe_small_patch16_224"
      "VIT", "vit_small_patch16_224" ]

/// DomainBed's model.pkl ({'model_dict': ..., 'args': ..., ...}); a flat state dict is accepted as well.
let private readDomainBed (path: string) =
    if isSafetensors path then
        let ts, others, _ = readFlat path []
        ts, others, None, None, None
    else
        use ck = readTorch path
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
            fail "%s: neither a DomainBed model.pkl (no 'model_dict') nor a state dict (keys: %s)" path keys
        | v -> fail "%s: not a DomainBed model.pkl: the file holds %s" path (describe v)

/// The ResNet-50 names of DomainBed's ERM (featurizer.network.*, classifier.*; network.0/1.* are the same tensors).
let private fromDomainBedResNet (ts: (string * Tensor) list) =
    let keep, dup = ts |> List.partition (fun (n, _) -> n.StartsWith "featurizer." || n.StartsWith "classifier.")
    for _, t in dup do t.Dispose()
    keep, dup |> List.map (fun (n, _) -> n, "duplicate of featurizer.* / classifier.* (DomainBed's ERM registers them twice as network.0 / network.1)")

// ---- torchvision ResNet-50 -----------------------------------------------------------------------------------------

let private fromTorchvision (ts: (string * Tensor) list) =
    let mapped =
        ts
        |> List.map (fun (n, t) ->
            let target =
                if n.StartsWith "fc." then "classifier." + n.Substring 3
                else "featurizer.network." + n
            (n, target), (target, t))
    List.map snd mapped, List.map fst mapped

/// Read a checkpoint of the given format into SfMoe names.
let read (format: Format) (path: string) : Source =
    if not (File.Exists path) then fail "%s: file not found" path
    let baseSource =
        { Path = path; Format = format; Tensors = []; Renamed = []; Ignored = []; Info = []; Config = None; IsResNet = false
          Normalization = Normalization.imagenet; Dataset = None; Algorithm = None }
    let fromMeta (meta: Map<string, string>) =
        match meta.TryFind "sfmoe_model_config" with
        | Some json ->
            try Some(ConfigJson.parse Registry.tryCreate json)
            with :? ConfigException as e -> fail "%s: its sfmoe_model_config metadata is invalid: %s" path e.Message
        | None -> None
    match format with
    | Deit ->
        let ts, others, _ = readFlat path [ "model" ]
        let ts, renamed = stripCommonPrefix "module." ts
        { baseSource with Tensors = ts; Renamed = renamed; Info = others }
    | Timm ->
        let ts, others, meta = readFlat path [ "state_dict"; "model" ]
        let ts, renamed = stripCommonPrefix "module." ts
        { baseSource with Tensors = ts; Renamed = renamed; Info = others; Config = fromMeta meta }
    | Torchvision ->
        let ts, others, _ = readFlat path [ "state_dict"; "model" ]
        let ts, _ = stripCommonPrefix "module." ts
        let ts, renamed = fromTorchvision ts
        { baseSource with Tensors = ts; Renamed = renamed; Info = others; IsResNet = true }
    | Augreg ->
        let arrays = Npz.read path
        try
            let ts, renamed, ignored = fromAugreg path arrays
            { baseSource with Tensors = ts; Renamed = renamed; Ignored = ignored; Normalization = Normalization.inception }
        finally
            disposeAll arrays
    | SfMoeDg | GMoe ->
        let ts, info, algorithm, dataset, classes = readDomainBed path
        let isResNet = ts |> List.exists (fun (n, _) -> n.StartsWith "featurizer.network.")
        let ts, renamed, ignored =
            if isResNet then
                let keep, ign = fromDomainBedResNet ts
                keep, [], ign
            else
                let ts, renamed = stripCommonPrefix "model." ts
                if format = GMoe then
                    let m = KeyMap.fromAuthors ts
                    // Tensors KeyMap did not pass through (the ignored buffers) are disposed; transposed copies replace originals.
                    let kept = Collections.Generic.HashSet<Tensor>(HashIdentity.Reference)
                    for _, t in m.Tensors do kept.Add t |> ignore
                    for _, t in ts do if not (kept.Contains t) then t.Dispose()
                    let fullName (n: string) = if renamed.IsEmpty then n else "model." + n
                    let tutel = dict m.Renamed
                    let composed =
                        [ for n, _ in ts do
                              let final = match tutel.TryGetValue n with | true, f -> f | _ -> n
                              if fullName n <> final && not (m.Ignored |> List.contains n) then yield fullName n, final ]
                    m.Tensors,
                    composed,
                    [ for n in m.Ignored -> fullName n, "tutel's _num_global_experts buffer (the expert count; SfMoe keeps it in the config)" ]
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

// ------------------------------------------------------------------------------------------------------------------
// The architecture of a checkpoint
// ------------------------------------------------------------------------------------------------------------------

/// The ViT config a checkpoint's tensors describe (heads = D / 64 as in every timm/DeiT size; GroupNorm groups 32).
/// Also returns the assumptions made.
let inferConfig (src: Source) : VitConfig * string list =
    let t = dict src.Tensors
    let shape (k: string) =
        match t.TryGetValue k with
        | true, x -> Some x.shape
        | _ -> None
    let req (k: string) =
        match shape k with
        | Some s -> s
        | None -> fail "%s: cannot infer the model: no %s (pass --model or --model-config)" src.Path k
    let d = int (req "cls_token").[2]
    let depth =
        src.Tensors
        |> List.choose (fun (n, _) -> let m = Regex.Match(n, @"^blocks\.(\d+)\.") in if m.Success then Some(int m.Groups[1].Value) else None)
        |> List.fold max -1
        |> (+) 1
    if depth < 1 then fail "%s: cannot infer the model: no blocks.* keys" src.Path
    let distilled = t.ContainsKey "dist_token"
    let prefix = if distilled then 2 else 1
    let patchW = req "patch_embed.proj.weight"
    let patch = int patchW[2]
    let hybrid =
        if t.ContainsKey "patch_embed.backbone.stem.conv.weight" then
            let stages =
                src.Tensors
                |> List.choose (fun (n, _) -> let m = Regex.Match(n, @"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.conv3\.weight$") in if m.Success then Some(int m.Groups[1].Value, int m.Groups[2].Value) else None)
                |> List.groupBy fst
                |> List.sortBy fst
            let layers = stages |> List.map (fun (_, bs) -> bs.Length)
            let channels = stages |> List.map (fun (s, _) -> int (req (sprintf "patch_embed.backbone.stages.%d.blocks.0.conv3.weight" s)).[0])
            let stem = int (req "patch_embed.backbone.stem.conv.weight").[0]
            let widths = stem :: channels @ (channels |> List.map HybridConfig.mid)
            let groups = [ 32; 16; 8; 4; 2; 1 ] |> List.find (fun g -> widths |> List.forall (fun c -> c % g = 0))
            Some { Layers = layers; Channels = channels; StemChannels = stem; NumGroups = groups }
        else None
    let inChans =
        match hybrid with
        | Some _ -> int (req "patch_embed.backbone.stem.conv.weight").[1]
        | None -> int patchW[1]
    let n = int (req "pos_embed").[1] - prefix
    let g = int (Math.Round(sqrt (float n)))
    if g * g <> n then fail "%s: pos_embed has %d patch positions, not a square grid" src.Path n
    let imgSize =
        match hybrid with
        | Some h -> g * patch * HybridConfig.stride h
        | None -> g * patch
    let kinds =
        [ for i in 0 .. depth - 1 ->
              if t.ContainsKey(sprintf "blocks.%d.mlp.experts.w1" i) then Sparse else Fusion ]
    let hidden =
        match [ 0 .. depth - 1 ] |> List.tryPick (fun i -> shape (sprintf "blocks.%d.mlp.fc1.weight" i)) with
        | Some s -> int s[0]
        | None ->
            match [ 0 .. depth - 1 ] |> List.tryPick (fun i -> shape (sprintf "blocks.%d.mlp.experts.w1" i)) with
            | Some s -> int s[2]
            | None -> 4 * d
    let moe =
        match [ 0 .. depth - 1 ] |> List.tryFind (fun i -> kinds[i] = Sparse) with
        | None -> MoeConfig.sfmoe
        | Some i ->
            let p = sprintf "blocks.%d.mlp." i
            let e = int (req (p + "experts.w1")).[0]
            let bias = t.ContainsKey(p + "experts.b1")
            match shape (p + "gate.sim_matrix") with
            | Some s -> { MoeConfig.gmoe with NumExperts = e; Router = CosineRouter(int s[0]); ExpertBias = bias }
            | None -> { MoeConfig.sfmoe with NumExperts = e; ExpertBias = bias }
    let heads = max 1 (d / 64)
    let classes =
        match shape "head.weight" with
        | Some s -> int s[0]
        | None -> 1000
    let cfg =
        { VitConfig.create d depth heads with
            ImgSize = imgSize
            PatchSize = patch
            InChans = inChans
            MlpRatio = float hidden / float d
            NumClasses = classes
            Distilled = distilled
            QkvBias = t.ContainsKey "blocks.0.attn.qkv.bias"
            Pattern = ofKinds kinds
            Moe = moe
            Hybrid = hybrid }
    let notes =
        [ yield sprintf "num_heads %d assumed (embed_dim / 64, as every timm/DeiT size)" heads
          match hybrid with
          | Some h when h.NumGroups = 32 -> yield "GroupNorm with 32 groups assumed (timm's ResNetV2)"
          | Some h -> yield sprintf "GroupNorm with %d groups assumed (the most, up to timm's 32, that divide every width)" h.NumGroups
          | None -> ()
          if kinds |> List.contains Sparse then
              yield sprintf "MoE settings other than the expert count are the %s defaults" (match moe.Router with CosineRouter _ -> "GMoE" | LinearRouter -> "SF-MoE")
          if not (t.ContainsKey "head.weight") then yield "no head in the checkpoint: 1000 classes assumed" ]
    match VitConfig.validate cfg with
    | Ok c -> c, notes
    | Error e -> fail "%s: the inferred model is invalid (%s); pass --model or --model-config" src.Path e

// ------------------------------------------------------------------------------------------------------------------
// Loading into a network
// ------------------------------------------------------------------------------------------------------------------

/// What a load did with every key.
type Report =
    { /// Network keys copied from the checkpoint unchanged.
      Loaded: string list
      /// Checkpoint name -> network name, where they differ.
      Renamed: (string * string) list
      /// pos_embed: key, checkpoint shape, network shape (bicubic over the grid).
      Resampled: (string * int64[] * int64[]) list
      /// Network keys left at their init although task-specific (heads): key, why.
      Reinitialised: (string * string) list
      /// Dense FFN key -> expert key it was copied into (all E experts).
      Upcycled: (string * string) list
      /// Network keys the checkpoint cannot provide, left at their init: key, why.
      Initialised: (string * string) list
      /// Checkpoint keys not used: key, why.
      Ignored: (string * string) list
      /// What else the file holds.
      Info: (string * string) list
      /// Assumptions made (an inferred model).
      Notes: string list }

let private shapeStr (s: int64[]) = "[" + String.Join(", ", s) + "]"

/// The report as text lines (what `sfmoe import` prints). `verbose` lists every loaded key.
let describeReport (verbose: bool) (r: Report) : string list =
    let section (title: string) (items: string list) =
        [ yield sprintf "%s: %d" title items.Length
          for i in items do yield "  " + i ]
    [ yield sprintf "loaded: %d tensors%s" r.Loaded.Length (if verbose || r.Loaded.IsEmpty then "" else " (--verbose lists them)")
      if verbose then for k in r.Loaded do yield "  " + k
      if not r.Renamed.IsEmpty then
          yield sprintf "renamed: %d checkpoint keys%s" r.Renamed.Length (if verbose then "" else " (--verbose lists them)")
          if verbose then for a, b in r.Renamed do yield sprintf "  %s -> %s" a b
      yield! section "resampled" [ for k, a, b in r.Resampled -> sprintf "%s %s -> %s (bicubic over the patch grid)" k (shapeStr a) (shapeStr b) ]
      yield! section "re-initialised" [ for k, why in r.Reinitialised -> sprintf "%s (%s)" k why ]
      yield! section "upcycled" [ for a, b in r.Upcycled -> sprintf "%s -> %s (copied into every expert)" a b ]
      yield! section "initialised" [ for k, why in r.Initialised -> sprintf "%s (%s)" k why ]
      yield! section "ignored" [ for k, why in r.Ignored -> sprintf "%s (%s)" k why ]
      if not r.Info.IsEmpty then
          yield "also in the file:"
          for k, v in r.Info do yield sprintf "  %s: %s" k v
      for n in r.Notes do yield "note: " + n ]

let private headKeys = set [ "head.weight"; "head.bias"; "head_dist.weight"; "head_dist.bias"; "classifier.weight"; "classifier.bias" ]
let private routerRx = Regex(@"^blocks\.(\d+)\.mlp\.gate\.")
let private expertRx = Regex(@"^blocks\.(\d+)\.mlp\.experts\.")
let private denseRx = Regex(@"^blocks\.(\d+)\.mlp\.fc[12]\.(weight|bias)$")

/// The default expert init for a network: KeepInit for SF-MoE (linear router; the authors' behaviour), CopyDense for
/// GMoE (cosine router; GMoE copies DeiT's FFN into every expert).
let defaultExperts (c: VitConfig) : Upcycle.ExpertInit =
    match c.Moe.Router with
    | CosineRouter _ -> Upcycle.CopyDense
    | LinearRouter -> Upcycle.KeepInit

/// Load a checkpoint into a network in place (see the module doc). Nothing is copied unless the whole load is valid.
let loadInto (net: Networks.Network) (src: Source) (experts: Upcycle.ExpertInit option) : Report =
    let target = net.Module.state_dict ()
    let cfg =
        match net with
        | Networks.VitNet v -> Some v.Config
        | _ -> None
    match net, src.IsResNet with
    | Networks.VitNet _, true -> fail "%s is a ResNet-50 checkpoint; the network is a ViT" src.Path
    | Networks.ResNetNet _, false -> fail "%s is not a ResNet-50 checkpoint (torchvision or DomainBed ERM names); the network is a ResNet-50" src.Path
    | Networks.MnistNet _, _ -> fail "no pretrained weights exist for mnist_cnn"
    | _ -> ()
    let mode = match experts, cfg with | Some m, _ -> m | None, Some c -> defaultExperts c | None, None -> Upcycle.KeepInit
    let kinds = cfg |> Option.map VitConfig.kinds |> Option.defaultValue [||]
    let isSparse (i: int) = i < kinds.Length && kinds[i] = Sparse
    // 1. Dense FFNs of blocks that are sparse here become experts (or are dropped).
    let srcTensors, upReport =
        match cfg with
        | Some c ->
            let blocksWithExperts =
                set [ for n, _ in src.Tensors do let m = expertRx.Match n in if m.Success then yield int m.Groups[1].Value ]
            // A block whose checkpoint already has experts keeps them; only dense FFNs are upcycled.
            let dense, rest = src.Tensors |> List.partition (fun (n, _) -> let m = denseRx.Match n in m.Success && not (blocksWithExperts.Contains(int m.Groups[1].Value)))
            let up, rep = Upcycle.stateDict c mode dense
            up @ rest, rep
        | None -> src.Tensors, { Upcycle.Upcycled = []; Upcycle.Dropped = [] }
    let created =
        let original = Collections.Generic.HashSet<Tensor>(src.Tensors |> List.map snd, HashIdentity.Reference)
        srcTensors |> List.filter (fun (_, t) -> not (original.Contains t))
    let fresh = ResizeArray<Tensor>()
    try
        let srcMap = dict srcTensors
        let upcycledTargets = set (upReport.Upcycled |> List.map snd)
        let droppedBlocks =
            set [ for n in upReport.Dropped do let m = denseRx.Match n in if m.Success then yield int m.Groups[1].Value ]
        let loaded = ResizeArray<string>()
        let toCopy = ResizeArray<string * Tensor>()
        let resampled = ResizeArray<string * int64[] * int64[]>()
        let reinit = ResizeArray<string * string>()
        let initialised = ResizeArray<string * string>()
        let missing = ResizeArray<string>()
        let mismatched = ResizeArray<string * int64[] * int64[]>()
        for KeyValue(k, t) in target do
            match srcMap.TryGetValue k with
            | true, s when s.shape = t.shape ->
                toCopy.Add((k, s))
                if not (upcycledTargets.Contains k) then loaded.Add k
            | true, s when k = "pos_embed" && cfg.IsSome && s.ndim = 3L && s.shape[2] = t.shape[2] ->
                let c = cfg.Value
                let prefix = int64 (VitConfig.prefixTokens c)
                let n = s.shape[1] - prefix
                let g = int64 (Math.Round(sqrt (float n)))
                if g * g <> n || n <= 0L then mismatched.Add((k, s.shape, t.shape)) // not a square grid (distilled vs not?)
                else
                    let gt = int64 (VitConfig.grid c)
                    // Resampled in the model's dtype (bicubic interpolation of half precision is not available on the CPU).
                    use s32 = s.to_type(t.dtype)
                    let r = Vit.resamplePosEmbed prefix g g s32 gt gt
                    fresh.Add r
                    if r.shape <> t.shape then mismatched.Add((k, s.shape, t.shape))
                    else
                        toCopy.Add((k, r))
                        resampled.Add((k, s.shape, t.shape))
            | true, s when headKeys.Contains k && s.ndim = t.ndim && s.shape[1..] = t.shape[1..] ->
                reinit.Add((k, sprintf "the checkpoint has %d classes, the model %d" s.shape[0] t.shape[0]))
            | true, s -> mismatched.Add((k, s.shape, t.shape))
            | false, _ when headKeys.Contains k -> reinit.Add((k, "not in the checkpoint"))
            | false, _ ->
                let r, e = routerRx.Match k, expertRx.Match k
                if r.Success && isSparse (int r.Groups[1].Value) then
                    initialised.Add((k, "router: always starts from its init"))
                elif e.Success && droppedBlocks.Contains(int e.Groups[1].Value) then
                    initialised.Add((k, "experts keep their init: --experts random, SF-MoE's behaviour"))
                elif k.EndsWith "num_batches_tracked" then
                    initialised.Add((k, "BatchNorm step counter, not in the checkpoint"))
                else missing.Add k
        let droppedWhy (n: string) =
            let m = denseRx.Match n
            let i = int m.Groups[1].Value
            match mode with
            | Upcycle.KeepInit -> sprintf "dense FFN of block %d, sparse in the model: its experts start from their init (--experts random)" i
            | Upcycle.CopyDense -> sprintf "bias of block %d's dense FFN: the model's experts have no biases (moe.expert_bias false; the authors' .npz path drops them too)" i
        let ignored =
            [ yield! src.Ignored
              for n in upReport.Dropped -> n, droppedWhy n ]
        let unexpected =
            [ for n, _ in srcTensors do
                  if not (target.ContainsKey n) && not (upReport.Dropped |> List.contains n) then yield n ]
        let hint =
            [ if unexpected |> List.contains "dist_token" then yield "the checkpoint is a distilled DeiT (dist_token, head_dist): use a distilled model such as deit_small_distilled_patch16_224 or sfmoe_small_patch16_224"
              if missing.Contains "dist_token" then yield "the model is distilled (dist_token, head_dist) but the checkpoint is not: use a non-distilled model such as deit_small_patch16_224 or gmoe_small_patch16_224"
              if unexpected |> List.exists (fun n -> n.StartsWith "patch_embed.backbone.") then yield "the checkpoint is a hybrid (ResNet stem): use vit_small_r26_s32_224, hybrid_sfmoe_small_r26_s32_224 or a config with hybrid_backbone"
              if missing |> Seq.exists (fun n -> n.StartsWith "patch_embed.backbone.") then yield "the model is a hybrid (ResNet stem) but the checkpoint has no patch_embed.backbone.*" ]
        if mismatched.Count > 0 || missing.Count > 0 || not unexpected.IsEmpty then
            let parts =
                [ for k, a, b in mismatched -> sprintf "shape mismatch: %s: checkpoint %s, model %s" k (shapeStr a) (shapeStr b)
                  if missing.Count > 0 then yield sprintf "missing in the checkpoint: %s" (String.Join(", ", missing))
                  if not unexpected.IsEmpty then yield sprintf "not in the model: %s" (String.Join(", ", unexpected)) ]
            fail "%s (%s): %s%s" src.Path (Format.name src.Format) (String.Join("; ", parts))
                (if hint.IsEmpty then "" else "; " + String.Join("; ", hint))
        let r = Weights.load false net.Module (List.ofSeq toCopy)
        if not r.Unexpected.IsEmpty then fail "internal: unexpected keys %A" r.Unexpected
        { Loaded = List.ofSeq loaded
          Renamed = src.Renamed
          Resampled = List.ofSeq resampled
          Reinitialised = List.ofSeq reinit
          Upcycled = upReport.Upcycled
          Initialised = List.ofSeq initialised
          Ignored = ignored
          Info = src.Info
          Notes = [] }
    finally
        for _, t in created do t.Dispose()
        for t in fresh do t.Dispose()
