/// Small shared vocabulary: device+dtype (Dd), the explicit forward context (Ctx), dispose-scope helpers,
/// seeded random draws and initialisers. Layer functions take a Ctx instead of reading global state.
module SfMoe.Core.Tensors

open System
open TorchSharp

type Tensor = torch.Tensor

/// Device and dtype fixed at construction (timm's `dd`): models are built where they will run.
type Dd =
    { Device: torch.Device
      DType: torch.ScalarType }

module Dd =
    let cpu = { Device = torch.CPU; DType = torch.ScalarType.Float32 }

    /// Parse "cpu", "cuda" or "cuda:N"; an unavailable CUDA device is a clear error.
    let parse (s: string) : Result<Dd, string> =
        match s.Trim().ToLowerInvariant() with
        | "cpu" -> Ok cpu
        | d when d = "cuda" || d.StartsWith "cuda:" ->
            if not (torch.cuda.is_available ()) then
                Error(sprintf "device %s requested but CUDA is not available in this build (it uses the CPU libtorch package; build with -p:SfMoeTorchBackend=cuda on a CUDA machine)" s)
            else
                Ok { cpu with Device = torch.device d }
        | _ -> Error(sprintf "unknown device %s: expected cpu, cuda or cuda:N" s)

/// Explicit forward context: training mode and the random generator used for dropout, drop-path,
/// gate noise and the random second-expert policy. `Rng = None` draws from torch's global generator.
type Ctx =
    { Training: bool
      Rng: torch.Generator option }

module Ctx =
    let eval = { Training = false; Rng = None }
    let train = { Training = true; Rng = None }
    let withRng (g: torch.Generator) (c: Ctx) = { c with Rng = Some g }

/// Uniform [0,1) draws of the given shape, from the context's generator when it has one.
let rand (ctx: Ctx) (shape: int64[]) (like: Tensor) : Tensor =
    match ctx.Rng with
    | Some g -> torch.rand(shape, dtype = like.dtype, device = like.device, generator = g)
    | None -> torch.rand(shape, dtype = like.dtype, device = like.device)

/// Standard normal draws of the given shape, from the context's generator when it has one.
let randn (ctx: Ctx) (shape: int64[]) (like: Tensor) : Tensor =
    match ctx.Rng with
    | Some g -> torch.randn(shape, dtype = like.dtype, device = like.device, generator = g)
    | None -> torch.randn(shape, dtype = like.dtype, device = like.device)

/// Dropout with the context's generator (inverted scaling, as torch.nn.Dropout). Identity in eval or at p = 0.
let dropout (ctx: Ctx) (p: float) (x: Tensor) : Tensor =
    if not ctx.Training || p <= 0.0 then x.alias ()
    elif ctx.Rng.IsNone then torch.nn.functional.dropout(x, p, true)
    else
        use keep = (rand ctx x.shape x).ge_(p.ToScalar()) // in place: 1.0 where kept
        (x * keep).div_((1.0 - p).ToScalar())

/// Stochastic depth (timm DropPath, scale_by_keep): drops the whole residual branch per sample.
let dropPath (ctx: Ctx) (p: float) (x: Tensor) : Tensor =
    if not ctx.Training || p <= 0.0 then x.alias ()
    else
        let shape = Array.init (int x.ndim) (fun i -> if i = 0 then x.shape[0] else 1L)
        use keep = (rand ctx shape x).ge_(p.ToScalar()) // (B, 1, ..., 1)
        (x * keep).div_((1.0 - p).ToScalar())

/// Run `f` in a dispose scope; only its result survives.
let scoped (f: unit -> Tensor) : Tensor =
    use scope = torch.NewDisposeScope()
    scope.MoveToOuter(f ())

/// Run `f` in a dispose scope; only its two results survive.
let scoped2 (f: unit -> Tensor * Tensor) : Tensor * Tensor =
    use scope = torch.NewDisposeScope()
    let a, b = f ()
    let struct (a, b) = scope.MoveToOuter(a, b)
    a, b

/// A generator seeded on the given device.
let generator (seed: int64) (dd: Dd) : torch.Generator =
    new torch.Generator(uint64 seed, dd.Device)

/// Initialisers that draw from an optional generator (deterministic model construction). TorchSharp's
/// torch.nn.init functions accept a generator but ignore it (0.107), so these draw with torch.rand/randn.
module Init =
    let private draw (g: torch.Generator option) (normal: bool) (t: Tensor) : Tensor =
        let shape = t.shape
        match g, normal with
        | Some g, false -> torch.rand(shape, dtype = t.dtype, device = t.device, generator = g)
        | Some g, true -> torch.randn(shape, dtype = t.dtype, device = t.device, generator = g)
        | None, false -> torch.rand(shape, dtype = t.dtype, device = t.device)
        | None, true -> torch.randn(shape, dtype = t.dtype, device = t.device)

    /// U(lo, hi).
    let uniform (lo: float) (hi: float) (g: torch.Generator option) (t: Tensor) =
        use _ = torch.no_grad ()
        use u = draw g false t
        t.copy_(u.mul_((hi - lo).ToScalar()).add_(lo.ToScalar())) |> ignore

    /// N(mean, std^2).
    let normal (mean: float) (std: float) (g: torch.Generator option) (t: Tensor) =
        use _ = torch.no_grad ()
        use n = draw g true t
        t.copy_(n.mul_(std.ToScalar()).add_(mean.ToScalar())) |> ignore

    /// Truncated normal N(0, std^2) on [-2, 2] (absolute bounds, as timm's trunc_normal_), by inverse CDF.
    let truncNormal (std: float) (g: torch.Generator option) (t: Tensor) =
        use _ = torch.no_grad ()
        let cdf (x: float) =
            use v = torch.tensor(x / sqrt 2.0, dtype = torch.ScalarType.Float64)
            use e = v.erf ()
            (1.0 + e.item<float> ()) / 2.0
        let lo, hi = cdf (-2.0 / std), cdf (2.0 / std)
        use u = draw g false t
        u.mul_((2.0 * (hi - lo)).ToScalar()).add_((2.0 * lo - 1.0).ToScalar()).erfinv_()
         .mul_((std * sqrt 2.0).ToScalar()).clamp_((-2.0).ToScalar(), (2.0).ToScalar()) |> ignore
        t.copy_(u) |> ignore

    let zeros (t: Tensor) =
        use _ = torch.no_grad ()
        t.zero_() |> ignore

    let ones (t: Tensor) =
        use _ = torch.no_grad ()
        t.fill_(1.0) |> ignore

/// Shape of a tensor as an F# list (for messages and tests).
let shapeOf (t: Tensor) = t.shape |> Array.toList

let shapeString (t: Tensor) = "[" + String.Join(", ", t.shape) + "]"
