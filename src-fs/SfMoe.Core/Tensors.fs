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

    /// `parse`, raising a ConfigException on a bad or unavailable device.
    let ofString (s: string) : Dd =
        match parse s with
        | Ok dd -> dd
        | Error e -> raise (SfMoe.ConfigException e)

/// Explicit forward context: training mode and the random generator used for dropout, drop-path,
/// gate noise and the random second-expert policy. `Rng = None` draws from torch's global generator.
type Ctx =
    { Training: bool
      Rng: torch.Generator option }

module Ctx =
    let eval = { Training = false; Rng = None }
    let train = { Training = true; Rng = None }
    let withRng (g: torch.Generator) (c: Ctx) = { c with Rng = Some g }

/// Scalars that are never garbage. TorchSharp frees a Scalar in its finalizer, and the GC may run that finalizer
/// while a native call still reads it (the JIT ends a temporary's lifetime as soon as its handle is read), so a
/// temporary such as `x.mul(0.5)` can crash or corrupt a result under GC pressure. Every Scalar the core passes to
/// TorchSharp comes from here (a bounded set of constants) or lives in a `use` binding across the call.
module Scalars =
    let private cache = System.Collections.Concurrent.ConcurrentDictionary<float, Scalar>()
    /// The process-wide Scalar of a constant value.
    let constant (v: float) : Scalar = cache.GetOrAdd(v, fun v -> v.ToScalar())
    let one = constant 1.0
    /// 1 as an integer (integral tensors refuse a floating-point alpha).
    let oneInt = (1L).ToScalar()

/// a + b. (TorchSharp's `+` passes a temporary alpha Scalar of 1 to the native add: see Scalars.)
let add (a: Tensor) (b: Tensor) : Tensor =
    a.add(b, (if torch.is_floating_point a then Scalars.one else Scalars.oneInt))

/// a - b (no Scalar involved; here for symmetry with `add`).
let sub (a: Tensor) (b: Tensor) : Tensor = a.sub(b)

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
        use keep = (rand ctx x.shape x).ge_(Scalars.constant p) // in place: 1.0 where kept
        (x * keep).div_(Scalars.constant (1.0 - p))

/// Stochastic depth (timm DropPath, scale_by_keep): drops the whole residual branch per sample.
let dropPath (ctx: Ctx) (p: float) (x: Tensor) : Tensor =
    if not ctx.Training || p <= 0.0 then x.alias ()
    else
        let shape = Array.init (int x.ndim) (fun i -> if i = 0 then x.shape[0] else 1L)
        use keep = (rand ctx shape x).ge_(Scalars.constant p) // (B, 1, ..., 1)
        (x * keep).div_(Scalars.constant (1.0 - p))

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
        use range = (hi - lo).ToScalar()
        use low = lo.ToScalar()
        t.copy_(u.mul_(range).add_(low, Scalars.one)) |> ignore

    /// N(mean, std^2).
    let normal (mean: float) (std: float) (g: torch.Generator option) (t: Tensor) =
        use _ = torch.no_grad ()
        use n = draw g true t
        use s = std.ToScalar()
        use m = mean.ToScalar()
        t.copy_(n.mul_(s).add_(m, Scalars.one)) |> ignore

    /// Truncated normal N(0, std^2) on [-2, 2] (absolute bounds, as timm's trunc_normal_), by inverse CDF.
    let truncNormal (std: float) (g: torch.Generator option) (t: Tensor) =
        use _ = torch.no_grad ()
        let cdf (x: float) =
            use v = torch.tensor(x / sqrt 2.0, dtype = torch.ScalarType.Float64)
            use e = v.erf ()
            (1.0 + e.item<float> ()) / 2.0
        let lo, hi = cdf (-2.0 / std), cdf (2.0 / std)
        use u = draw g false t
        use a = (2.0 * (hi - lo)).ToScalar()
        use b = (2.0 * lo - 1.0).ToScalar()
        use c = (std * sqrt 2.0).ToScalar()
        u.mul_(a).add_(b, Scalars.one).erfinv_().mul_(c).clamp_(Scalars.constant -2.0, Scalars.constant 2.0) |> ignore
        t.copy_(u) |> ignore

    let zeros (t: Tensor) =
        use _ = torch.no_grad ()
        t.zero_() |> ignore

    let ones (t: Tensor) =
        use _ = torch.no_grad ()
        t.fill_(Scalars.one) |> ignore

/// Shape of a tensor as an F# list (for messages and tests).
let shapeOf (t: Tensor) = t.shape |> Array.toList

let shapeString (t: Tensor) = "[" + String.Join(", ", t.shape) + "]"
