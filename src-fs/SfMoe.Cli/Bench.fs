/// Benchmarks that print ratios measured side by side in one run (the machines are shared and noisy: compare
/// ratios, not absolute times across runs).
module SfMoe.Cli.Bench

open System
open System.Diagnostics
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Pattern

/// Median of a list of timings.
let median (xs: float list) =
    let a = List.sort xs |> List.toArray
    if a.Length = 0 then nan
    elif a.Length % 2 = 1 then a[a.Length / 2]
    else (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2.0

/// Time `f` (ms) on `device`: `warmup` untimed runs, then `repeats` timed ones, each in its own dispose scope. The
/// device is synchronised before every clock read (CUDA queues kernels: without it the clock times their launch); on
/// the CPU that is nothing.
let time (device: torch.Device) (warmup: int) (repeats: int) (f: unit -> unit) : float list =
    let run () =
        use _ = torch.NewDisposeScope()
        f ()
    for _ in 1..warmup do run ()
    [ for _ in 1..repeats ->
          synchronize device
          let sw = Stopwatch.StartNew()
          run ()
          synchronize device
          sw.Elapsed.TotalMilliseconds ]

type MoeBenchResult =
    { moe_ms: float
      dense_ms: float
      ratio: float
      experts_ms: float
      routing_ms: float
      routing_fraction: float
      tokens: int64
      pairs: int64
      pairs_per_token: float
      capacity: int64
      threads: int
      dim: int
      hidden: int
      experts: int
      top_k: int
      policy: string
      capacity_factor: string
      scope: string
      device: string
      precision: string }

/// Forward+backward of the MoE layer and of a dense FFN with the same tokens and dims, interleaved so both see
/// the same machine load. The routing share = (layer - experts alone on the same sorted tokens) / layer.
let moe (dim: int) (hidden: int) (experts: int) (topK: int) (tokens: int64) (tokensPerImage: int64) (cap: Capacity)
        (policy: SecondPolicy) (scope: CapacityScope) (warmup: int) (repeats: int) (dd: Dd) (precision: Precision) : MoeBenchResult =
    let m =
        { MoeConfig.sfmoe with
            NumExperts = experts
            TopK = topK
            SecondPolicy = policy
            CapacityTrain = cap
            Scope = scope }
    let c =
        { VitConfig.create dim 1 1 with
            MlpRatio = float hidden / float dim
            Pattern = parseOrFail "S"
            Moe = m }
    match VitConfig.validate c with
    | Error e -> raise (Output.UsageError e)
    | Ok _ -> ()
    if tokens % tokensPerImage <> 0L then
        raise (Output.UsageError(sprintf "--tokens (%d) must be a multiple of the tokens per image (%d)" tokens tokensPerImage))
    let dev = dd.Device
    let g = Some(generator 0L dd)
    let moeP = Moe.init c dd g
    let dense = Mlp.init c dd g
    // A router that spreads tokens like a trained one: SF-MoE's N(0,1) gate on LayerNorm'd inputs (drawn on the CPU).
    torch.manual_seed 0L |> ignore
    let b = tokens / tokensPerImage
    use z0 = torch.randn(b, tokensPerImage, int64 dim)
    use zc = torch.nn.functional.layer_norm(z0, [| int64 dim |])
    use z = zc.``to``(dev)
    use dyc = torch.randn(b, tokensPerImage, int64 dim)
    use dy = dyc.``to``(dev)
    let ctx = { Ctx.train with Precision = precision }
    let zeroGrads (ps: seq<Modules.Parameter>) = for p in ps do (if not (isNull p.grad) then p.grad.zero_() |> ignore)
    let moeNode = Layers.node (Moe.tree moeP)
    let denseNode = Layers.node (Mlp.tree dense)
    use rng = generator 1L dd
    let moeStep () =
        use zi = z.detach().requires_grad_(true)
        let o = Moe.forward c (Ctx.withRng rng ctx) moeP false zi
        use y = o.Y
        use aux = o.Aux
        use l = (y * dy).sum()
        use total = l + aux
        total.backward ()
        zeroGrads (moeNode.parameters ())
    let denseStep () =
        use zi = z.detach().requires_grad_(true)
        use y = Mlp.forward c ctx dense zi
        use l = (y * dy).sum()
        l.backward ()
        zeroGrads (denseNode.parameters ())
    // The experts alone, on the tokens the router sends them (sorted by expert, gate-weighted like the layer).
    let o0 = Moe.forward c (Ctx.withRng (generator 1L dd) ctx) moeP true z
    let r = o0.Record.Value
    let counts = (use c = r.Load.cpu () in c.data<int64>().ToArray())
    let pairs = Array.sum counts
    o0.Y.Dispose()
    o0.Aux.Dispose()
    let capacity = r.Capacity
    (r :> IDisposable).Dispose()
    use xs0c = torch.randn(pairs, int64 dim)
    use xs0 = xs0c.``to``(dev)
    use dysc = torch.randn(pairs, int64 dim)
    use dys = dysc.``to``(dev)
    let expertStep () =
        use xs = xs0.detach().requires_grad_(true)
        use y = Experts.forwardSorted ctx 0.0 moeP.Experts xs counts
        use l = (y * dys).sum()
        l.backward ()
        zeroGrads (moeNode.parameters ())
    for _ in 1..warmup do
        (use _ = torch.NewDisposeScope() in moeStep ())
        (use _ = torch.NewDisposeScope() in denseStep ())
        (use _ = torch.NewDisposeScope() in expertStep ())
    let tm, td, te = ResizeArray(), ResizeArray(), ResizeArray()
    for _ in 1..repeats do
        tm.AddRange(time dev 0 1 moeStep)
        td.AddRange(time dev 0 1 denseStep)
        te.AddRange(time dev 0 1 expertStep)
    let mm, dm, em = median (List.ofSeq tm), median (List.ofSeq td), median (List.ofSeq te)
    { moe_ms = mm
      dense_ms = dm
      ratio = mm / dm
      experts_ms = em
      routing_ms = mm - em
      routing_fraction = (mm - em) / mm
      tokens = tokens
      pairs = pairs
      pairs_per_token = float pairs / float tokens
      capacity = capacity
      threads = torch.get_num_threads ()
      dim = dim
      hidden = hidden
      experts = experts
      top_k = topK
      policy = ConfigJson.policyName policy
      capacity_factor = (match cap with Dropless -> "dropless" | Factor f -> string f)
      scope = ConfigJson.scopeName scope
      device = string dev
      precision = Precision.name precision }

type StepBenchResult =
    { step_ms: float
      forward_ms: float
      backward_ms: float
      optimizer_ms: float
      model: string
      batch_size: int
      img_size: int
      in_chans: int
      threads: int
      device: string
      precision: string
      macs_per_image: int64
      /// kept token-expert pairs per step, summed over the sparse blocks (routing statistics of the timed steps)
      pairs_per_step: float
      /// pairs per token per sparse block (at most top-k)
      pairs_per_token: float
      step_gflop: float
      achieved_gflops: float
      /// the peak the MFU is taken against (TFLOP/s), or null when unknown
      peak_tflops: Nullable<float>
      /// where the peak comes from: "--peak-tflops", the table row, or the CPU's measured matmul rate
      peak_source: string
      /// achieved FLOP/s / peak, or null when the peak is unknown
      mfu: Nullable<float> }

/// The machine's float32 matmul rate (2 * n^3 flops per n x n product), median of a few runs.
let matmulGflops (n: int64) =
    use a = torch.randn(n, n)
    use b = torch.randn(n, n)
    let ts = time torch.CPU 2 5 (fun () -> (torch.matmul(a, b)).Dispose())
    2.0 * float (n * n * n) / (median ts / 1000.0) / 1e9

/// Training FLOPs of a ViT step, from the work actually done:
///   step FLOPs = 3 x 2 x MACs   (a multiply-accumulate is 2 FLOPs; the backward pass does about twice the forward's)
///   MACs = batch x dense MACs per image + pairs x 2 x D x H
/// where the dense MACs per image are the closed forms of Summary.table (patch embedding, attention, fusion FFNs,
/// routers, heads) without the sparse blocks' expert term (top-k x 2 x N x D x H per block), and `pairs` is the number
/// of kept (token, expert) pairs the sparse blocks' experts processed in the step, summed over the blocks (each pair
/// is one token through one expert's two D x H matmuls). Norms, softmax, GELU and the optimizer are not counted.
module Flops =
    /// MACs per image of everything but the experts.
    let denseMacsPerImage (c: VitConfig) : int64 =
        let n = int64 (VitConfig.numTokens c)
        let d, h = int64 c.EmbedDim, int64 (VitConfig.hidden c)
        let sparse = VitConfig.kinds c |> Array.filter (fun k -> k = Sparse) |> Array.length |> int64
        let all = Summary.table c |> List.sumBy (fun (_, _, _, _, m) -> m)
        all - sparse * int64 c.Moe.TopK * 2L * n * d * h

    /// MACs of one (token, expert) pair: the expert's two D x H matmuls.
    let macsPerPair (c: VitConfig) : int64 = 2L * int64 c.EmbedDim * int64 (VitConfig.hidden c)

    /// FLOPs of one training step of `batch` images whose sparse blocks processed `pairs` token-expert pairs.
    let step (c: VitConfig) (batch: int) (pairs: float) : float =
        3.0 * 2.0 * (float batch * float (denseMacsPerImage c) + pairs * float (macsPerPair c))

/// Dense peak FLOP rates of NVIDIA GPUs (TFLOP/s, without sparsity) by precision, from NVIDIA's data sheets (SXM
/// parts); None where the GPU has no such mode.
module Peaks =
    type Row = { Gpu: string; Bf16: float option; Tf32: float option; Fp32: float option }

    let table =
        [ { Gpu = "H200"; Bf16 = Some 989.0; Tf32 = Some 494.7; Fp32 = Some 66.9 }
          { Gpu = "H100"; Bf16 = Some 989.0; Tf32 = Some 494.7; Fp32 = Some 66.9 }
          { Gpu = "A100"; Bf16 = Some 312.0; Tf32 = Some 156.0; Fp32 = Some 19.5 }
          // V100: its 125 TFLOP/s are fp16 tensor cores; it has neither bf16 nor TF32 tensor cores.
          { Gpu = "V100"; Bf16 = None; Tf32 = None; Fp32 = Some 15.7 } ]

    /// The table row of a CUDA device name ("NVIDIA H100 80GB HBM3" -> H100), if any.
    let rowOf (gpuName: string) =
        table |> List.tryFind (fun r -> gpuName.ToUpperInvariant().Contains r.Gpu)

    /// The peak (TFLOP/s) of a GPU at a precision, with its source; or why there is none.
    let lookup (gpuName: string) (p: Precision) : Result<float * string, string> =
        match rowOf gpuName with
        | None -> Error(sprintf "no peak known for GPU \"%s\" (the table has %s): give --peak-tflops" gpuName (table |> List.map (fun r -> r.Gpu) |> String.concat ", "))
        | Some r ->
            match p, (match p with Bf16 -> r.Bf16 | Tf32 -> r.Tf32 | Fp32 -> r.Fp32) with
            | _, Some v -> Ok(v, sprintf "%s dense %s peak (table)" r.Gpu (Precision.name p))
            | Tf32, None when r.Fp32.IsSome ->
                // libtorch's TF32 flags do nothing without TF32 tensor cores: the matmuls run in float32.
                Ok(r.Fp32.Value, sprintf "%s dense fp32 peak (table; no TF32 tensor cores: tf32 computes in fp32)" r.Gpu)
            | _, None -> Error(sprintf "n/a: the %s has no %s tensor cores (give --peak-tflops to compare anyway)" r.Gpu (Precision.name p))

    /// The name of CUDA device `index`: SFMOE_GPU_NAME if set, else nvidia-smi's (the index counts among the visible
    /// GPUs, as CUDA does); None when neither answers.
    let gpuName (index: int) : string option =
        match Environment.GetEnvironmentVariable "SFMOE_GPU_NAME" with
        | null | "" ->
            let index = max 0 index
            let visible =
                match Environment.GetEnvironmentVariable "CUDA_VISIBLE_DEVICES" with
                | null | "" -> None
                | v -> v.Split(',') |> Array.tryItem index |> Option.map (fun s -> s.Trim())
            try
                let psi = ProcessStartInfo("nvidia-smi", RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
                for a in [ "--query-gpu=name"; "--format=csv,noheader"; "-i"; defaultArg visible (string index) ] do psi.ArgumentList.Add a
                use p = Process.Start psi
                let out = p.StandardOutput.ReadToEnd()
                let first = out.Trim().Split('\n') |> Array.head |> fun l -> l.Trim()
                if p.WaitForExit(10000) && p.ExitCode = 0 && first <> "" then Some first else None
            with _ -> None
        | name -> Some name

/// One training step (forward, backward, Adam) on random tensors, median after warm-up; forward alone and
/// forward + backward timed too. Any backbone: a ViT (SF-MoE objective, Adam lr 1e-5) or a CNN baseline (ERM as
/// DomainBed: Adam lr 1e-3 for MNIST_CNN, 5e-5 for ResNet-50 with its BatchNorms frozen). The model FLOP utilisation is
/// FLOPs from the work done (Flops.step for a ViT; 3 x 2 x MACs per image x batch for a CNN) per second over the
/// device's peak (the table for a GPU, --peak-tflops, or on a CPU the measured float32 matmul rate).
let step (arch: Config.Architecture) (name: string) (batch: int) (warmup: int) (repeats: int) (dd: Dd) (precision: Precision)
         (peakOverride: float option) : StepBenchResult =
    let dev = dd.Device
    let net = Networks.build arch dd 0L 0.0
    use _net = net.Module
    let kind, lr =
        match arch with
        | Config.VitArch _ -> Train.SfMoeAlg, 1e-5
        | Config.CnnArch { Kind = Config.MnistCnn } -> Train.Erm, 1e-3
        | Config.CnnArch _ -> Train.Erm, 5e-5
    use learner = new Train.Learner(net, kind, Optim.AdamL2, lr, 0.0, 0L, dd, precision, false)
    torch.manual_seed 0L |> ignore
    let img = int64 (Config.Architecture.imgSize arch)
    use xc = torch.randn(int64 batch, int64 (Config.Architecture.inChans arch), img, img)
    use yc = torch.randint(int64 (Config.Architecture.numClasses arch), [| int64 batch |])
    use x = xc.``to``(dev)
    use y = yc.``to``(dev)
    // Learner.Step (not Update): no host read inside the timed region; `time` synchronises around it.
    let stepTimes = time dev warmup repeats (fun () -> (learner.Step([ x ], [ y ])).Dispose())
    let stats = learner.TakeRoutingStats()
    let pairs = (stats |> List.sumBy (fun (_, s) -> Array.sum s.Load)) / float (warmup + repeats)
    let tokens = stats |> List.sumBy (fun (_, s) -> s.Tokens)
    let ctx = { Ctx.train with Precision = precision }
    net.SetTraining true
    let fwdTimes =
        time dev warmup repeats (fun () ->
            let o = Networks.run net ctx false x
            o.Logits.Dispose()
            o.Aux.Dispose())
    // backward: forward + backward without the optimizer, minus forward
    let fbTimes =
        time dev warmup repeats (fun () ->
            let o = Networks.run net ctx false x
            use l = Losses.crossEntropy o.Logits y
            use total = if kind = Train.Erm then l.alias () else l + o.Aux
            total.backward ()
            o.Logits.Dispose()
            o.Aux.Dispose()
            learner.Optimizer.ZeroGrad())
    let stepMs, fwdMs, fbMs = median stepTimes, median fwdTimes, median fbTimes
    let macs = Summary.macsPerImage arch
    let gflop =
        (match arch with
         | Config.VitArch cfg -> Flops.step cfg batch pairs
         | Config.CnnArch _ -> 3.0 * 2.0 * float macs * float batch) / 1e9
    let achieved = gflop / (stepMs / 1000.0)
    let peak, source =
        match peakOverride with
        | Some p -> Some p, "--peak-tflops"
        | None when dev.``type`` = DeviceType.CUDA ->
            match Peaks.gpuName (int dev.index) with
            | None -> None, "unknown GPU (set SFMOE_GPU_NAME or give --peak-tflops)"
            | Some n ->
                match Peaks.lookup n precision with
                | Ok(v, s) -> Some v, sprintf "%s: %s" n s
                | Error e -> None, sprintf "%s: %s" n e
        | None when dev.``type`` = DeviceType.CPU -> Some(matmulGflops 1024L / 1000.0), "this CPU's measured float32 1024^3 matmul rate"
        | None -> None, sprintf "no peak for device %s: give --peak-tflops" (string dev)
    { step_ms = stepMs
      forward_ms = fwdMs
      backward_ms = fbMs - fwdMs
      optimizer_ms = stepMs - fbMs
      model = name
      batch_size = batch
      img_size = int img
      in_chans = Config.Architecture.inChans arch
      threads = torch.get_num_threads ()
      device = string dev
      precision = Precision.name precision
      macs_per_image = macs
      pairs_per_step = pairs
      pairs_per_token = (if tokens > 0.0 then pairs * float (warmup + repeats) / tokens else 0.0)
      step_gflop = gflop
      achieved_gflops = achieved
      peak_tflops = Option.toNullable peak
      peak_source = source
      mfu = peak |> Option.map (fun p -> achieved / (p * 1000.0)) |> Option.toNullable }
