/// Per-block structure of a model: kind and parameter count, from the config alone (closed forms) and
/// from a built model (counted), so each checks the other.
module SfMoe.Core.Summary

open SfMoe.Core.Pattern
open SfMoe.Core.Config
open SfMoe.Core.Layers

/// One row of a model's layout.
type Part =
    { Name: string
      Kind: string
      Params: int64 }

/// Parameters of one fusion block in closed form (timm Block with Mlp).
let fusionBlockParams (c: VitConfig) : int64 =
    let d, h = int64 c.EmbedDim, int64 (VitConfig.hidden c)
    let norms = 4L * d
    let qkv = 3L * d * d + (if c.QkvBias then 3L * d else 0L)
    let proj = d * d + d
    let mlp = d * h + h + h * d + d
    norms + qkv + proj + mlp

/// Parameters of one sparse block in closed form: attention and norms as a fusion block, plus the router and
/// E experts (with biases when configured).
let sparseBlockParams (c: VitConfig) : int64 =
    let d, h = int64 c.EmbedDim, int64 (VitConfig.hidden c)
    let m = c.Moe
    let e = int64 m.NumExperts
    let attn = fusionBlockParams c - (d * h + h + h * d + d)
    let router =
        match m.Router with
        | LinearRouter -> d * e
        | CosineRouter projDim -> let p = int64 projDim in d * p + p + p * e + 1L
    let experts = e * (d * h + h * d) + (if m.ExpertBias then e * (h + d) else 0L)
    attn + router + experts

/// Parameters of the patch embedding in closed form (with the ResNetV2 stem of a hybrid).
let patchEmbedParams (c: VitConfig) : int64 =
    let d = int64 c.EmbedDim
    let proj = int64 (VitConfig.patchInChans c) * int64 (c.PatchSize * c.PatchSize) * d + d
    match c.Hybrid with
    | Some h -> proj + ResNetV2.paramCount h c.InChans
    | None -> proj

/// Multiply-accumulates of the patch embedding (and the hybrid's stem) per image.
let patchEmbedMacs (c: VitConfig) : int64 =
    let np = int64 (VitConfig.numPatches c)
    let proj = np * int64 (VitConfig.patchInChans c) * int64 (c.PatchSize * c.PatchSize) * int64 c.EmbedDim
    match c.Hybrid with
    | Some h -> proj + ResNetV2.macs h c.InChans c.ImgSize
    | None -> proj

/// Total parameters in closed form.
let totalParams (c: VitConfig) : int64 =
    let d, k = int64 c.EmbedDim, int64 c.NumClasses
    let patch = patchEmbedParams c
    let tokens = int64 (VitConfig.prefixTokens c) * d + int64 (VitConfig.numTokens c) * d
    let heads = int64 (if c.Distilled then 2 else 1) * (d * k + k)
    let blocks = VitConfig.kinds c |> Array.sumBy (function Fusion -> fusionBlockParams c | Sparse -> sparseBlockParams c)
    patch + tokens + blocks + 2L * d + heads

/// Layout of a built model: embedding, each block, norm and head(s), with counted parameters.
let parts (m: SfMoe.Core.Vit.SfMoeVit) : Part list =
    let c = m.Config
    let p = m.Params
    let d = int64 c.EmbedDim
    let tokenParams = int64 (VitConfig.prefixTokens c) * d + int64 (VitConfig.numTokens c) * d
    let stem = p.Backbone |> Option.map (fun b -> countParams (node (ResNetV2.tree b))) |> Option.defaultValue 0L
    [ yield { Name = "embed"; Kind = (if c.Hybrid.IsSome then "stem+patch+tokens" else "patch+tokens"); Params = countParams p.PatchEmbed + stem + tokenParams }
      for i, b in Array.indexed p.Blocks do
          let n = node (SfMoe.Core.Block.tree b)
          yield { Name = sprintf "blocks.%d" i; Kind = BlockKind.letter b.Kind; Params = countParams n }
      yield { Name = "norm"; Kind = "norm"; Params = countParams p.Norm }
      yield
          { Name = "head"
            Kind = (if c.Distilled then "head+head_dist" else "head")
            Params = countParams p.Head + (p.HeadDist |> Option.map countParams |> Option.defaultValue 0L) } ]

/// Multiply-accumulates of one block's forward pass per image of N tokens (attention and FFN; a sparse block
/// counts its router and k experts per token, the most its capacity lets through).
let blockMacs (c: VitConfig) (n: int64) (kind: BlockKind) : int64 =
    let d, h = int64 c.EmbedDim, int64 (VitConfig.hidden c)
    let attn = n * d * 3L * d + 2L * n * n * d + n * d * d
    let ffn =
        match kind with
        | Fusion -> 2L * n * d * h
        | Sparse ->
            let m = c.Moe
            let router =
                match m.Router with
                | LinearRouter -> n * d * int64 m.NumExperts
                | CosineRouter projDim -> n * (d * int64 projDim + int64 projDim * int64 m.NumExperts)
            router + int64 m.TopK * 2L * n * d * h
    attn + ffn

/// Parameters used per token: a sparse block counts its router and k of its E experts.
let activeBlockParams (c: VitConfig) (kind: BlockKind) : int64 =
    match kind with
    | Fusion -> fusionBlockParams c
    | Sparse ->
        let m = c.Moe
        let d, h = int64 c.EmbedDim, int64 (VitConfig.hidden c)
        let e = int64 m.NumExperts
        let perExpert = d * h + h * d + (if m.ExpertBias then h + d else 0L)
        sparseBlockParams c - (e - int64 m.TopK) * perExpert

/// Per-part table of a config: name, kind, parameters, active parameters per token, MACs per image.
let table (c: VitConfig) : (string * string * int64 * int64 * int64) list =
    let n = int64 (VitConfig.numTokens c)
    let d, k = int64 c.EmbedDim, int64 c.NumClasses
    let embed = patchEmbedParams c + int64 (VitConfig.prefixTokens c) * d + n * d
    let heads = int64 (if c.Distilled then 2 else 1)
    [ yield "embed", (if c.Hybrid.IsSome then "stem+patch+tokens" else "patch+tokens"), embed, embed, patchEmbedMacs c
      for i, kind in Array.indexed (VitConfig.kinds c) do
          let p = match kind with Fusion -> fusionBlockParams c | Sparse -> sparseBlockParams c
          yield sprintf "blocks.%d" i, BlockKind.letter kind, p, activeBlockParams c kind, blockMacs c n kind
      yield "norm", "norm", 2L * d, 2L * d, 0L
      yield "head", (if c.Distilled then "head+head_dist" else "head"), heads * (d * k + k), heads * (d * k + k), heads * d * k ]

/// Parameters of a CNN baseline in closed form (torchvision's ResNet-50, DomainBed's MNIST_CNN, each with its linear
/// classifier; BatchNorm running statistics are buffers, not parameters).
let cnnParams (c: CnnConfig) : int64 =
    let k, inC = int64 c.NumClasses, int64 c.InChans
    match c.Kind with
    | MnistCnn ->
        let conv i o = i * 9L * o + o
        conv inC 64L + conv 64L 128L + 2L * conv 128L 128L + 2L * (64L + 3L * 128L) + 128L * k + k
    | ResNet50 ->
        let stages = [ 64L, 3; 128L, 4; 256L, 6; 512L, 3 ]
        let mutable inCh = 64L
        let mutable total = inC * 64L * 49L + 2L * 64L
        for mid, n in stages do
            for i in 0 .. n - 1 do
                let out = 4L * mid
                total <- total + inCh * mid + mid * mid * 9L + mid * out + 2L * (mid + mid + out)
                if i = 0 then total <- total + inCh * out + 2L * out
                inCh <- out
        total + 2048L * k + k

/// Forward multiply-accumulates per image of an architecture: the closed forms above for a ViT, the convolutions'
/// for the CNN baselines (MNIST_CNN at its input size, ResNet-50's published 4.1 G at 224).
let macsPerImage (a: Architecture) : int64 =
    match a with
    | VitArch c -> table c |> List.sumBy (fun (_, _, _, _, m) -> m)
    | CnnArch c ->
        match c.Kind with
        | MnistCnn ->
            let s = int64 c.ImgSize
            let h = (s + 1L) / 2L // the stride-2 second convolution
            s * s * int64 c.InChans * 9L * 64L + h * h * (64L * 9L * 128L + 2L * 128L * 9L * 128L)
        | ResNet50 -> int64 (4.1e9 * float (c.ImgSize * c.ImgSize) / (224.0 * 224.0))
