/// The ResNetV2 stem of a hybrid ViT (timm v0.5.4 `ResNetV2(preact=False, stem_type='same',
/// conv_layer=StdConv2dSame(eps=1e-8))` as used by vit_small_r26_s32_224 and vit_base_r50_s16_224):
///   stem:   StdConv 7x7/2 -> GroupNorm + ReLU -> max pool 3x3/2            (TF "SAME" padding everywhere)
///   stages: non-pre-activation bottlenecks, stride 1 in the first stage and 2 after (on the 3x3 conv):
///           conv1 1x1 -> GN+ReLU -> conv2 3x3 -> GN+ReLU -> conv3 1x1 -> GN -> + shortcut -> ReLU;
///           the first block of a stage has a projection shortcut StdConv 1x1/stride -> GN (no act).
/// Convolutions standardise their kernel per output channel at every use (biased variance, eps 1e-8) and have no
/// bias; GroupNorm has num_groups groups and eps 1e-5. State-dict names are timm's: stem.conv, stem.norm,
/// stages.{i}.blocks.{j}.{conv1,norm1,conv2,norm2,conv3,norm3,downsample.conv,downsample.norm}.
module SfMoe.Core.ResNetV2

open System
open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Layers

/// Weight-standardisation epsilon of the hybrid's StdConv2dSame (timm passes 1e-8).
let stdConvEps = 1e-8
let groupNormEps = 1e-5

/// A bias-free convolution applied with a standardised kernel and TF "SAME" padding.
type StdConv = { Conv: Conv2d; Kernel: int; Stride: int }

/// TF "SAME" padding of one side length: (before, after), the extra pixel after.
let samePad (size: int64) (kernel: int) (stride: int) : int64 * int64 =
    let s, k = int64 stride, int64 kernel
    let total = max ((size + s - 1L) / s - 1L) 0L * s + k - size |> max 0L
    total / 2L, total - total / 2L

/// Pad (B, C, H, W) for a SAME window (value: 0 for convolutions, -inf for max pooling).
let padSame (kernel: int) (stride: int) (value: float) (x: Tensor) : Tensor =
    let t, b = samePad x.shape[2] kernel stride
    let l, r = samePad x.shape[3] kernel stride
    if t = 0L && b = 0L && l = 0L && r = 0L then x.alias ()
    else torch.nn.functional.pad(x, [| l; r; t; b |], PaddingModes.Constant, value)

/// The standardised kernel: per output channel (w - mean) / sqrt(var + eps), biased variance (timm computes it
/// with F.batch_norm in training mode).
let standardize (w: Tensor) : Tensor =
    let o = w.shape[0]
    use flat = w.reshape(o, -1L)
    let struct (var, mean) = flat.var_mean(1L, false, true)
    use var = var
    use mean = mean
    use centred = flat - mean
    use denom = var.add(Scalars.constant stdConvEps, Scalars.one).sqrt_()
    use z = centred / denom
    z.reshape(w.shape)

let stdConvForward (c: StdConv) (x: Tensor) : Tensor =
    use xp = padSame c.Kernel c.Stride 0.0 x
    use w = standardize c.Conv.weight
    torch.nn.functional.conv2d(xp, w, null, [| int64 c.Stride; int64 c.Stride |], [| 0L; 0L |], [| 1L; 1L |], 1L)

/// Conv with timm ResNetV2's init: kaiming-normal, fan_out, ReLU gain (std = sqrt(2 / (out * k * k))).
let private stdConv (dd: Dd) (g: torch.Generator option) (inC: int) (outC: int) (k: int) (stride: int) : StdConv =
    let c = torch.nn.Conv2d(int64 inC, int64 outC, int64 k, 1L, 0L, 1L, PaddingModes.Zeros, 1L, false, dd.Device, Nullable dd.DType)
    Init.normal 0.0 (sqrt (2.0 / float (outC * k * k))) g c.weight
    { Conv = c; Kernel = k; Stride = stride }

let private groupNorm (dd: Dd) (h: HybridConfig) (c: int) : GroupNorm =
    torch.nn.GroupNorm(int64 h.NumGroups, int64 c, groupNormEps, true, dd.Device, Nullable dd.DType)

let private gn (norm: GroupNorm) (relu: bool) (x: Tensor) : Tensor =
    let y = norm.forward x
    if relu then y.relu_() else y

/// A non-pre-activation bottleneck (timm resnetv2.Bottleneck).
type Bottleneck =
    { Conv1: StdConv; Norm1: GroupNorm; Conv2: StdConv; Norm2: GroupNorm; Conv3: StdConv; Norm3: GroupNorm
      Downsample: (StdConv * GroupNorm) option }

type Params =
    { Config: HybridConfig
      StemConv: StdConv
      StemNorm: GroupNorm
      Stages: Bottleneck[][] }

let init (h: HybridConfig) (inChans: int) (dd: Dd) (g: torch.Generator option) : Params =
    let stem = stdConv dd g inChans h.StemChannels 7 2
    let stemNorm = groupNorm dd h h.StemChannels
    let mutable prev = h.StemChannels
    let stages =
        List.zip h.Layers h.Channels
        |> List.mapi (fun si (depth, outC) ->
            let mid = HybridConfig.mid outC
            Array.init depth (fun bi ->
                let stride = if bi = 0 && si > 0 then 2 else 1
                let inC = prev
                let down = if bi = 0 then Some(stdConv dd g inC outC 1 stride, groupNorm dd h outC) else None
                let b =
                    { Conv1 = stdConv dd g inC mid 1 1
                      Norm1 = groupNorm dd h mid
                      Conv2 = stdConv dd g mid mid 3 stride
                      Norm2 = groupNorm dd h mid
                      Conv3 = stdConv dd g mid outC 1 1
                      Norm3 = groupNorm dd h outC
                      Downsample = down }
                prev <- outC
                b))
        |> List.toArray
    { Config = h; StemConv = stem; StemNorm = stemNorm; Stages = stages }

/// State-dict names (timm): stem.conv, stem.norm, stages.{i}.blocks.{j}.*.
let tree (p: Params) : (string * Module) list =
    let block (b: Bottleneck) =
        node
            [ match b.Downsample with
              | Some(c, n) -> yield "downsample", node [ "conv", c.Conv :> Module; "norm", n :> Module ] :> Module
              | None -> ()
              yield "conv1", b.Conv1.Conv :> Module
              yield "norm1", b.Norm1 :> Module
              yield "conv2", b.Conv2.Conv :> Module
              yield "norm2", b.Norm2 :> Module
              yield "conv3", b.Conv3.Conv :> Module
              yield "norm3", b.Norm3 :> Module ]
    [ "stem", node [ "conv", p.StemConv.Conv :> Module; "norm", p.StemNorm :> Module ] :> Module
      "stages",
      node
          [ for i, s in Array.indexed p.Stages ->
                string i, node [ "blocks", node [ for j, b in Array.indexed s -> string j, block b :> Module ] :> Module ] :> Module ]
      :> Module ]

let private bottleneckForward (b: Bottleneck) (x: Tensor) : Tensor =
    use shortcut =
        match b.Downsample with
        | Some(c, n) ->
            use d = stdConvForward c x
            gn n false d
        | None -> x.alias ()
    use h1 = stdConvForward b.Conv1 x
    use a1 = gn b.Norm1 true h1
    use h2 = stdConvForward b.Conv2 a1
    use a2 = gn b.Norm2 true h2
    use h3 = stdConvForward b.Conv3 a2
    use y = gn b.Norm3 false h3
    (add y shortcut).relu_()

/// (B, C, H, W) -> (B, featureDim, ceil(H / stride), ceil(W / stride)).
let forward (p: Params) (x: Tensor) : Tensor =
    use h = stdConvForward p.StemConv x
    use a = gn p.StemNorm true h
    use padded = padSame 3 2 Double.NegativeInfinity a
    let mutable cur = torch.nn.functional.max_pool2d(padded, [| 3L; 3L |], [| 2L; 2L |], [| 0L; 0L |])
    for stage in p.Stages do
        for b in stage do
            let next = bottleneckForward b cur
            cur.Dispose()
            cur <- next
    cur

/// Scalar parameters of the stem in closed form.
let paramCount (h: HybridConfig) (inChans: int) : int64 =
    let conv i o k = int64 i * int64 o * int64 (k * k)
    let norm c = 2L * int64 c
    let mutable prev = h.StemChannels
    let mutable total = conv inChans h.StemChannels 7 + norm h.StemChannels
    for depth, outC in List.zip h.Layers h.Channels do
        let mid = HybridConfig.mid outC
        for bi in 0 .. depth - 1 do
            if bi = 0 then total <- total + conv prev outC 1 + norm outC
            total <- total + conv prev mid 1 + norm mid + conv mid mid 3 + norm mid + conv mid outC 1 + norm outC
            prev <- outC
    total

/// Multiply-accumulates of the stem's convolutions for one image of side `size`.
let macs (h: HybridConfig) (inChans: int) (size: int) : int64 =
    let half v = (v + 1) / 2
    let conv i o k (outSide: int) = int64 i * int64 o * int64 (k * k) * int64 outSide * int64 outSide
    let mutable side = half size
    let mutable total = conv inChans h.StemChannels 7 side
    side <- half side
    let mutable prev = h.StemChannels
    List.zip h.Layers h.Channels
    |> List.iteri (fun si (depth, outC) ->
        let mid = HybridConfig.mid outC
        for bi in 0 .. depth - 1 do
            let inSide = side
            if bi = 0 && si > 0 then side <- half side
            if bi = 0 then total <- total + conv prev outC 1 side
            total <- total + conv prev mid 1 inSide + conv mid mid 3 side + conv mid outC 1 side
            prev <- outC)
    total
