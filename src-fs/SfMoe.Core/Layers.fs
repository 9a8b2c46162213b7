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

/// Number of scalar parameters of a module (recursively).
let countParams (m: Module) : int64 =
    m.parameters () |> Seq.sumBy (fun p -> p.numel ())
