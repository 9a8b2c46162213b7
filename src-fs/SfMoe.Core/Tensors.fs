/// Small shared vocabulary: device+dtype (Dd), numeric precision, random streams that are valid on any device, the
/// explicit forward context (Ctx), dispose-scope helpers, seeded random draws and initialisers. Layer functions take
/// a Ctx instead of reading global state.
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

/// Waits until `device` has run everything queued on it. CUDA runs kernels asynchronously, so a clock read without
/// this times the launches, not the work; benchmarks call it before every clock read (the training step never does).
/// Nothing on the CPU, whose ops have finished when they return.
let synchronize (device: torch.Device) =
    if device.``type`` = DeviceType.CUDA then torch.cuda.synchronize device

/// True for tensors on the CPU, whose values the host reads without synchronising anything.
let isCpu (t: Tensor) = t.device_type = DeviceType.CPU

/// True for tensors on libtorch's `meta` device (shapes only). libtorch 2.10's C++ build lacks meta kernels for a few
/// fused ops (native_layer_norm decomposes through batch_norm, scaled_dot_product_attention, var, conv2d,
/// index_select, masked_select, bincount); the core computes those with equivalent meta-safe ops on `meta` only.
let isMeta (t: Tensor) = t.device_type = DeviceType.META

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
    let private intCache = System.Collections.Concurrent.ConcurrentDictionary<int64, Scalar>()
    /// The process-wide integer Scalar of a constant (for integral tensors).
    let int (v: int64) : Scalar = intCache.GetOrAdd(v, fun v -> v.ToScalar())

/// a + b. (TorchSharp's `+` passes a temporary alpha Scalar of 1 to the native add: see Scalars.)
let add (a: Tensor) (b: Tensor) : Tensor =
    a.add(b, (if torch.is_floating_point a then Scalars.one else Scalars.oneInt))

/// a - b (no Scalar involved; here for symmetry with `add`).
let sub (a: Tensor) (b: Tensor) : Tensor = a.sub(b)

/// Numeric precision of the forward and backward passes.
type Precision =
    /// The weights' dtype (float32) everywhere; TF32 is switched off on CUDA.
    | Fp32
    /// float32 tensors; on CUDA, matmuls and convolutions may use TF32 tensor cores (libtorch's allow_tf32 flags).
    /// Changes nothing on a CPU.
    | Tf32
    /// Mixed precision: bfloat16 matmuls, convolutions and attention; float32 master weights, optimizer state,
    /// residual stream, norms, router logits and softmax, balance losses and the loss. Casts are explicit in the core.
    | Bf16

module Precision =
    let all = [ "fp32", Fp32; "tf32", Tf32; "bf16", Bf16 ]
    let name (p: Precision) = all |> List.find (fun (_, x) -> x = p) |> fst

    let parse (s: string) : Result<Precision, string> =
        match all |> List.tryFind (fun (n, _) -> n = s.Trim().ToLowerInvariant()) with
        | Some(_, p) -> Ok p
        | None -> Error(sprintf "unknown precision %s: expected fp32, tf32 or bf16" s)

    /// The dtype matmuls run in for weights of dtype `weights`.
    let computeType (p: Precision) (weights: torch.ScalarType) =
        if p = Bf16 && weights = torch.ScalarType.Float32 then torch.ScalarType.BFloat16 else weights

    /// Set libtorch's process-wide TF32 flags for a device (on for Tf32, off otherwise: PyTorch enables TF32 for
    /// cuDNN convolutions by default) and say what the setting means there.
    let configure (device: torch.Device) (p: Precision) : string =
        if device.``type`` = DeviceType.CUDA then
            let tf32 = (p = Tf32)
            torch.backends.cuda.matmul.allow_tf32 <- tf32
            torch.backends.cudnn.allow_tf32 <- tf32
            match p with
            | Fp32 -> "precision fp32: float32 matmuls and convolutions (TF32 off)"
            | Tf32 -> "precision tf32: float32 tensors, TF32 tensor cores for matmuls and convolutions"
            | Bf16 -> "precision bf16: bfloat16 matmuls, convolutions and attention; float32 weights, optimizer, norms, router and loss"
        else
            match p with
            | Fp32 -> "precision fp32"
            | Tf32 -> sprintf "precision tf32 changes nothing on %s: TF32 is a CUDA tensor-core mode; computing in float32" (string device)
            | Bf16 -> sprintf "precision bf16 on %s: bfloat16 matmuls and attention (libtorch's CPU kernels); float32 weights, optimizer, norms, router and loss" (string device)

/// SplitMix64 (Steele, Lea and Flood 2014): the host-side mixer of random-stream keys.
module SplitMix =
    let mix (x: uint64) : uint64 =
        let z = x + 0x9E3779B97F4A7C15UL
        let z = (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
        let z = (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
        z ^^^ (z >>> 31)

    /// A key from a seed and a counter (e.g. the training step).
    let key (seed: int64) (counter: int64) : uint64 = mix (mix (uint64 seed) ^^^ uint64 counter)

/// A counter-based random stream: draw d of the stream with key K fills element i with hash(K, d, i), computed with
/// integer tensor ops on the device of the tensor it is for. Nothing is read back and no generator state exists, so
/// it works on any device (CUDA, meta) and gives bit-identical uniforms on all of them; a stream is a function of
/// its key and of the order of its draws. 32-bit element counter: at most 2^32 elements per draw.
type HashStream(key: uint64) =
    let mutable draws = 0L
    member _.Key = key
    /// Draws made so far.
    member _.Draws = draws

    /// The two 32-bit keys of the next draw.
    member _.Next() : int64 * int64 =
        let z = SplitMix.mix (key + uint64 draws * 0xD1B54A32D192ED03UL)
        draws <- draws + 1L
        int64 (z &&& 0xFFFFFFFFUL), int64 (z >>> 32)

module HashStream =
    let private two32 = 4294967296L
    // Odd multipliers below 2^31: with values below 2^32 every product fits in int64 (no overflow on any device).
    let private m1 = 0x7feb352dL
    let private m2 = 0x5bd1e995L

    let private xorShift (x: Tensor) (k: int) =
        use t = x.div(Scalars.int (1L <<< k), rounding_mode = torch.RoundingMode.floor)
        x.bitwise_xor_(t) |> ignore

    let private mulMod (x: Tensor) (m: int64) =
        x.mul_(Scalars.int m).remainder_(Scalars.int two32) |> ignore

    /// A 32-bit xorshift-multiply mixer, in place on int64 values in [0, 2^32).
    let mix32 (x: Tensor) =
        xorShift x 16
        mulMod x m1
        xorShift x 15
        mulMod x m2
        xorShift x 16

    /// The same mixer on one value (the reference of tests).
    let mix32Value (x: int64) : int64 =
        let xs (x: int64) k = x ^^^ (x >>> k)
        let x = xs x 16
        let x = (x * m1) % two32
        let x = xs x 15
        let x = (x * m2) % two32
        xs x 16

    /// Random 32-bit words (int64 in [0, 2^32)) of the given shape on `device`: mix32(mix32(i + k1) + k2).
    let bits (s: HashStream) (shape: int64[]) (device: torch.Device) : Tensor =
        let n = Array.fold (*) 1L shape
        if n >= two32 then invalidArg "shape" (sprintf "a hashed draw holds at most 2^32 elements, not %d" n)
        let k1, k2 = s.Next()
        use sk1 = k1.ToScalar()
        use sk2 = k2.ToScalar()
        use stop = n.ToScalar()
        let x = torch.arange(stop, dtype = torch.ScalarType.Int64, device = device)
        x.add_(sk1, Scalars.oneInt).remainder_(Scalars.int two32) |> ignore
        mix32 x
        x.add_(sk2, Scalars.oneInt).remainder_(Scalars.int two32) |> ignore
        mix32 x
        use x = x
        x.view(shape)

    /// U[0, 1) with 24 random bits (exact in float32), as float32.
    let uniform (s: HashStream) (shape: int64[]) (device: torch.Device) : Tensor =
        use b = bits s shape device
        use top = b.div(Scalars.int 256L, rounding_mode = torch.RoundingMode.floor)
        top.to_type(torch.ScalarType.Float32).mul_(Scalars.constant (1.0 / 16777216.0))

    /// Standard normal draws by the inverse CDF of U(0, 1) (open interval, 24 bits), as float32.
    let normal (s: HashStream) (shape: int64[]) (device: torch.Device) : Tensor =
        use b = bits s shape device
        use top = b.div(Scalars.int 256L, rounding_mode = torch.RoundingMode.floor)
        let u = top.to_type(torch.ScalarType.Float32)
        // 2u - 1 with u = (m + 0.5) / 2^24: (m + 0.5) / 2^23 - 1, in (-1, 1)
        u.add_(Scalars.constant 0.5, Scalars.one).mul_(Scalars.constant (1.0 / 8388608.0)).sub_(Scalars.one)
            .erfinv_().mul_(Scalars.constant (sqrt 2.0))

/// Where a forward pass's random draws come from.
type Rng =
    /// A torch.Generator. TorchSharp 0.107 builds every Generator on the CPU (whatever device it reports), so draws
    /// are made on the CPU and copied to the device of the tensor they are for (on the CPU: exactly torch's draws).
    | Host of torch.Generator
    /// A counter-based stream computed on the tensor's own device (training on accelerators: no generator state,
    /// no host round trip).
    | Hashed of HashStream

/// Explicit forward context: training mode, the random stream used for dropout, drop-path, gate noise and the
/// random second-expert policy (`Rng = None` draws from torch's global generator of the device), the precision, and
/// whether to prefer deterministic kernels on CUDA (math attention instead of fused SDPA, patch embedding as a
/// matmul instead of cuDNN's convolution: slower).
type Ctx =
    { Training: bool
      Rng: Rng option
      Precision: Precision
      Deterministic: bool }

module Ctx =
    let eval = { Training = false; Rng = None; Precision = Fp32; Deterministic = false }
    let train = { eval with Training = true }
    let withRng (g: torch.Generator) (c: Ctx) = { c with Rng = Some(Host g) }
    let withStream (s: HashStream) (c: Ctx) = { c with Rng = Some(Hashed s) }

    /// `x` in the dtype matmuls run in (bfloat16 for float32 inputs under Bf16); an alias otherwise.
    let cast (c: Ctx) (x: Tensor) : Tensor =
        let t = Precision.computeType c.Precision x.dtype
        if t = x.dtype then x.alias () else x.to_type(t)

/// The dtype random floats are drawn in for a tensor of dtype `t` (float32 for half types).
let private drawType (t: torch.ScalarType) =
    if t = torch.ScalarType.Float64 then t else torch.ScalarType.Float32

/// Draws made on the CPU from a generator, then copied (without blocking the host) to `device`.
let private hostDraw (g: torch.Generator) (normal: bool) (shape: int64[]) (dtype: torch.ScalarType) (device: torch.Device) : Tensor =
    let t =
        if normal then torch.randn(shape, dtype = dtype, device = torch.CPU, generator = g)
        else torch.rand(shape, dtype = dtype, device = torch.CPU, generator = g)
    if device.``type`` = DeviceType.CPU then t
    else
        use t = t
        t.``to``(device, non_blocking = true)

let private draw (ctx: Ctx) (normal: bool) (shape: int64[]) (like: Tensor) : Tensor =
    let dtype = drawType like.dtype
    match ctx.Rng with
    | Some(Host g) -> hostDraw g normal shape dtype like.device
    | Some(Hashed s) ->
        let u = if normal then HashStream.normal s shape like.device else HashStream.uniform s shape like.device
        if dtype = u.dtype then u else (use u = u in u.to_type(dtype))
    | None ->
        if normal then torch.randn(shape, dtype = dtype, device = like.device)
        else torch.rand(shape, dtype = dtype, device = like.device)

/// Uniform [0,1) draws of the given shape on `like`'s device (float32, or float64 for float64 `like`).
let rand (ctx: Ctx) (shape: int64[]) (like: Tensor) : Tensor = draw ctx false shape like

/// Standard normal draws of the given shape on `like`'s device (float32, or float64 for float64 `like`).
let randn (ctx: Ctx) (shape: int64[]) (like: Tensor) : Tensor = draw ctx true shape like

/// Dropout with the context's stream (inverted scaling, as torch.nn.Dropout). Identity in eval or at p = 0.
let dropout (ctx: Ctx) (p: float) (x: Tensor) : Tensor =
    if not ctx.Training || p <= 0.0 then x.alias ()
    elif ctx.Rng.IsNone then torch.nn.functional.dropout(x, p, true)
    else
        use u = rand ctx x.shape x
        use keep = u.ge(Scalars.constant p) // bool: kept
        (x * keep).div_(Scalars.constant (1.0 - p))

/// Stochastic depth (timm DropPath, scale_by_keep): drops the whole residual branch per sample.
let dropPath (ctx: Ctx) (p: float) (x: Tensor) : Tensor =
    if not ctx.Training || p <= 0.0 then x.alias ()
    else
        let shape = Array.init (int x.ndim) (fun i -> if i = 0 then x.shape[0] else 1L)
        use u = rand ctx shape x
        use keep = u.ge(Scalars.constant p) // (B, 1, ..., 1)
        (x * keep).div_(Scalars.constant (1.0 - p))

/// min(x, c), meta-safe (clamp_max's backward, relu and abs have no meta kernel; there it is
/// (x + c - sqrt((x - c)^2)) / 2, the same shapes and graph size).
let clampMax (c: float) (x: Tensor) : Tensor =
    if not (isMeta x) then x.clamp_max(Scalars.constant c)
    else
        use d = x.sub(Scalars.constant c)
        use a = (d * d).sqrt()
        use sum = x.add(Scalars.constant c, Scalars.one)
        (sub sum a).mul_(Scalars.constant 0.5)

/// x / max(||x||_2, eps) along `dim` (F.normalize), meta-safe (clamp_min's backward has no meta kernel: there the
/// norm is not clamped, the same shapes and graph size).
let normalize (dim: int64) (x: Tensor) : Tensor =
    if not (isMeta x) then torch.nn.functional.normalize(x, 2.0, dim, 1e-12)
    else
        use sq = (x * x).sum([| dim |], true)
        use n = sq.sqrt()
        x / n

/// Unbiased variance of all elements (torch's default), meta-safe.
let variance (v: Tensor) : Tensor =
    if not (isMeta v) then v.var()
    else
        use m = v.mean()
        use c = sub v m
        use sq = (c * c).sum()
        sq.div(Scalars.constant (float (max 1L (v.numel () - 1L))))

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

/// A seeded generator. TorchSharp 0.107 can only create CPU generators (LibTorchSharp: "TODO: Support creation of
/// GPU RNGs"), so this is always one, whatever `dd` says: the core draws on the CPU with it (see Rng.Host).
let generator (seed: int64) (_dd: Dd) : torch.Generator =
    new torch.Generator(uint64 seed, torch.CPU)

/// Initialisers that draw from an optional generator (deterministic model construction). TorchSharp's
/// torch.nn.init functions accept a generator but ignore it (0.107), so these draw with torch.rand/randn. Values are
/// drawn and transformed on the CPU and then copied into the tensor, so a seed gives the same weights on any device.
module Init =
    let private draw (g: torch.Generator option) (normal: bool) (t: Tensor) : Tensor =
        let shape = t.shape
        match g, normal with
        | Some g, false -> torch.rand(shape, dtype = t.dtype, device = torch.CPU, generator = g)
        | Some g, true -> torch.randn(shape, dtype = t.dtype, device = torch.CPU, generator = g)
        | None, false -> torch.rand(shape, dtype = t.dtype, device = torch.CPU)
        | None, true -> torch.randn(shape, dtype = t.dtype, device = torch.CPU)

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
