/// The key maps of pretrained imports: each format's names become SfMoe's (timm's for a ViT; featurizer.network.* /
/// classifier.* for the ResNet-50), with every key accounted for (renamed, or ignored with the reason).
///   deit, timm  a DDP 'module.' prefix is removed
///   augreg      Google's names to timm's (timm v0.5.4 vision_transformer._load_weights): HWIO kernels to OIHW, (in, out)
///               kernels transposed, query/key/value (D, heads, hd) kernels flattened and concatenated into qkv, out
///               (heads, hd, D) into proj, the ResNet stem's conv_root/gn_root/block{i}/unit{j} into
///               patch_embed.backbone.*; an 'opt/target/' prefix is removed, pre_logits is ignored
///   sfmoe-dg    DomainBed's 'model.' prefixes are removed; MoE keys are lucidrains' = SfMoe's; an ERM ResNet-50 keeps
///               featurizer.* / classifier.* (network.0/1.* duplicate them)
///   gmoe        tutel MoE keys, mapped by KeyMap.fromAuthors
///   torchvision a ResNet-50 state dict into featurizer.network.* and classifier.*
module SfMoe.Core.ImportKeys

open System
open System.Text.RegularExpressions
open TorchSharp
open SfMoe.Core.Tensors

open SfMoe

let private fail fmt = Fail.checkpoint fmt

let internal disposeAll (ts: (string * Tensor) seq) = for _, t in ts do t.Dispose()

/// Remove a prefix that every key has (DDP's "module.").
let internal stripCommonPrefix (prefix: string) (ts: (string * Tensor) list) =
    if not ts.IsEmpty && ts |> List.forall (fun (n, _) -> n.StartsWith prefix) then
        ts |> List.map (fun (n, t) -> n.Substring prefix.Length, t), ts |> List.map (fun (n, _) -> n, n.Substring prefix.Length)
    else ts, []

// ---- augreg (.npz) -------------------------------------------------------------------------------------------------

let private blockRx = Regex(@"^Transformer/encoderblock_(\d+)/(.+)$")
let private unitRx = Regex(@"^block(\d+)/unit(\d+)/(conv[123]|gn[123]|conv_proj|gn_proj)/(kernel|scale|bias)$")

/// Google's names to timm's (timm v0.5.4 vision_transformer._load_weights), with every key accounted for.
let internal fromAugreg (name: string) (arrays: (string * Tensor) list) =
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
        | _ -> fail "%s: the .npz lacks %s%s" name prefix k
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
                    let target =
                        match layer, kind with
                        | "conv_proj", "kernel" -> p + "downsample.conv.weight"
                        | "gn_proj", "scale" -> p + "downsample.norm.weight"
                        | "gn_proj", "bias" -> p + "downsample.norm.bias"
                        | c, "kernel" when c.StartsWith "conv" -> p + c + ".weight"
                        | g, "scale" when g.StartsWith "gn" -> p + "norm" + g.Substring 2 + ".weight"
                        | g, "bias" when g.StartsWith "gn" -> p + "norm" + g.Substring 2 + ".bias"
                        | _ -> fail "%s: unexpected key %s%s" name prefix k
                    used.Add k |> ignore
                    emit k target (if kind = "kernel" then hwio t else (vec t).clone ())
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
            elif not (used.Contains(n.Substring prefix.Length)) then fail "%s: unexpected key %s in the .npz (not a ViT or R26/R50 hybrid checkpoint?)" name n
        List.ofSeq out, List.ofSeq renamed, List.ofSeq ignored
    with _ ->
        disposeAll out
        reraise ()

// ---- DomainBed model.pkl -------------------------------------------------------------------------------------------

/// DomainBed's algorithm names and the registry model of each (the authors' constructors).
let internal algorithmModels =
    [ "SFMOE", "sfmoe_small_patch16_224"
      "HybridSFMOE", "hybrid_sfmoe_small_r26_s32_224"
      "HybridVIT", "vit_small_r26_s32_224"
      "GMOE", "gmoe_small_patch16_224"
      "VIT", "vit_small_patch16_224" ]

/// The ResNet-50 names of DomainBed's ERM (featurizer.network.*, classifier.*; network.0/1.* are the same tensors).
let internal fromDomainBedResNet (ts: (string * Tensor) list) =
    let keep, dup = ts |> List.partition (fun (n, _) -> n.StartsWith "featurizer." || n.StartsWith "classifier.")
    for _, t in dup do t.Dispose()
    keep, dup |> List.map (fun (n, _) -> n, "duplicate of featurizer.* / classifier.* (DomainBed's ERM registers them twice as network.0 / network.1)")

/// tutel's keys of GMoE (KeyMap.fromAuthors) after DomainBed's 'model.' prefix was removed (`hadPrefix`): the tensors,
/// checkpoint name -> SfMoe name where they differ, and the ignored keys. Tensors KeyMap did not pass through (the
/// ignored buffers) are disposed; transposed copies replace originals.
let internal fromTutel (hadPrefix: bool) (ts: (string * Tensor) list) =
    let m = KeyMap.fromAuthors ts
    let kept = Collections.Generic.HashSet<Tensor>(HashIdentity.Reference)
    for _, t in m.Tensors do kept.Add t |> ignore
    for _, t in ts do if not (kept.Contains t) then t.Dispose()
    let fullName (n: string) = if hadPrefix then "model." + n else n
    let tutel = dict m.Renamed
    let composed =
        [ for n, _ in ts do
              let final = match tutel.TryGetValue n with | true, f -> f | _ -> n
              if fullName n <> final && not (m.Ignored |> List.contains n) then yield fullName n, final ]
    m.Tensors,
    composed,
    [ for n in m.Ignored -> fullName n, "tutel's _num_global_experts buffer (the expert count; SfMoe keeps it in the config)" ]

// ---- torchvision ResNet-50 -----------------------------------------------------------------------------------------

/// torchvision's ResNet-50 names into the ERM network's (fc.* is the classifier).
let internal fromTorchvision (ts: (string * Tensor) list) =
    let mapped =
        ts
        |> List.map (fun (n, t) ->
            let target =
                if n.StartsWith "fc." then "classifier." + n.Substring 3
                else "featurizer.network." + n
            (n, target), (target, t))
    List.map snd mapped, List.map fst mapped
