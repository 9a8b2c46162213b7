/// Parameter containers and their initialisation. Records of TorchSharp modules hold the parameters; `Node`
/// gives them their state-dict names explicitly (timm keys are the interop contract). Raw parameters
/// live in leaf modules and are read by name at every use, so `.to(device)` cannot leave stale references.
module SfMoe.Core.Layers

open System
open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors

type Module = torch.nn.Module

/// A named grouping module: registers children and raw parameters under fixed names.
type Node(name: string, children: (string * Module) list, parameters: (string * Parameter) list) as this =
    inherit Module(name)

    do
        for n, m in children do
            this.register_module(n, m)
        for n, p in parameters do
            this.register_parameter(n, p)

    /// Registration is explicit: never let TorchSharp's reflection add fields under other names.
    override _.RegisterComponents() = ()

    /// The current parameter registered under `key` on this node (survives `.to(device)`).
    member this.Param(key: string) : Tensor =
        match this.get_parameter key with
        | null -> invalidOp (sprintf "module %s has no parameter %s" name key)
        | p -> p :> Tensor

/// A Node from children only.
let node (children: (string * Module) list) = new Node("node", children, [])

/// A parameter of the given shape on dd (values are set by the caller's initialiser).
let parameter (dd: Dd) (shape: int64[]) : Parameter =
    new Parameter(torch.empty(shape, dtype = dd.DType, device = dd.Device), true)

/// nn.Linear with timm's ViT init: weight trunc-normal(0.02), bias 0.
let linear (dd: Dd) (g: torch.Generator option) (inF: int) (outF: int) (bias: bool) : Linear =
    let l = torch.nn.Linear(int64 inF, int64 outF, bias, dd.Device, Nullable dd.DType)
    Init.truncNormal 0.02 g l.weight
    if bias then Init.zeros l.bias
    l

/// nn.LayerNorm with weight 1, bias 0 (set explicitly: TorchSharp's norm layers built with a device do not always
/// initialise their parameters).
let layerNorm (dd: Dd) (dim: int) (eps: float) : LayerNorm =
    let n = torch.nn.LayerNorm(int64 dim, eps, true, true, dd.Device, Nullable dd.DType)
    Init.ones n.weight
    Init.zeros n.bias
    n

/// Patch-embedding convolution (kernel = stride = patch) with PyTorch's default init drawn from `g`:
/// weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
let patchConv (dd: Dd) (g: torch.Generator option) (inC: int) (outC: int) (patch: int) : Conv2d =
    let c = torch.nn.Conv2d(int64 inC, int64 outC, int64 patch, int64 patch, 0L, 1L, PaddingModes.Zeros, 1L, true, dd.Device, Nullable dd.DType)
    let bound = 1.0 / sqrt (float (inC * patch * patch))
    Init.uniform -bound bound g c.weight
    Init.uniform -bound bound g c.bias
    c

/// x W^T + b in the context's precision: under Bf16 the operands are cast to bfloat16 (autograd returns float32
/// gradients to the float32 weights); otherwise the module's own forward.
let dense (ctx: Ctx) (l: Linear) (x: Tensor) : Tensor =
    let t = Precision.computeType ctx.Precision l.weight.dtype
    if t = l.weight.dtype && x.dtype = t then l.forward x
    else
        use xc = if x.dtype = t then x.alias () else x.to_type(t)
        use w = l.weight.to_type(t)
        use b = match l.bias with null -> null | b -> b.to_type(t)
        torch.nn.functional.linear(xc, w, b)

/// LayerNorm over the last dimension, always in the weights' dtype (float32: norms stay out of bfloat16). On the
/// meta device it is written out (mean, biased variance, rsqrt): libtorch's C++ meta backend has no layer_norm.
let norm (ln: LayerNorm) (x: Tensor) : Tensor =
    use xf = if x.dtype = ln.weight.dtype then x.alias () else x.to_type(ln.weight.dtype)
    if not (isMeta x) then ln.forward xf
    else
        use mean = xf.mean([| -1L |], true)
        use c = sub xf mean
        use var = (c * c).mean([| -1L |], true)
        use inv = var.add(Scalars.constant ln.eps, Scalars.one).rsqrt()
        use y = c * inv
        use yw = y * ln.weight
        add yw ln.bias

/// Non-overlapping patch embedding (kernel = stride = patch): (B, C, H, W) -> (B, gh*gw, D), in the context's
/// precision, returned in the weights' dtype. cuDNN's convolution normally; with `ctx.Deterministic` (cuDNN may
/// pick non-deterministic backward algorithms) and on the meta device it is the same product written as a matmul
/// over flattened (C, p, p) patches.
let patchEmbed (ctx: Ctx) (conv: Conv2d) (patch: int) (x: Tensor) : Tensor * int64 * int64 =
    let p = int64 patch
    let b, ch, hgt, wid = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    let gh, gw = hgt / p, wid / p
    let weights = conv.weight.dtype
    let t = Precision.computeType ctx.Precision weights
    use xc = if x.dtype = t then x.alias () else x.to_type(t)
    use w = if t = weights then conv.weight.alias () else conv.weight.to_type(t)
    use bias = match conv.bias with null -> null | bb -> bb.to_type(t)
    use y =
        if ctx.Deterministic || isMeta x then
            use v = xc.view(b, ch, gh, p, gw, p)
            use perm = v.permute(0L, 2L, 4L, 1L, 3L, 5L) // (B, gh, gw, C, p, p)
            use flat = perm.reshape(b, gh * gw, ch * p * p)
            use wf = w.reshape(w.shape[0], ch * p * p) // (D, C*p*p)
            torch.nn.functional.linear(flat, wf, bias) // (B, gh*gw, D)
        else
            use c = torch.nn.functional.conv2d(xc, w, bias, [| p; p |], [| 0L; 0L |], [| 1L; 1L |], 1L) // (B, D, gh, gw)
            use f = c.flatten(2L)
            f.transpose(1L, 2L) // (B, gh*gw, D)
    (if y.dtype = weights then y.alias () else y.to_type(weights)), gh, gw

/// Number of scalar parameters of a module (recursively).
let countParams (m: Module) : int64 =
    m.parameters () |> Seq.sumBy (fun p -> p.numel ())
