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

/// Time `f` (ms): `warmup` untimed runs, then `repeats` timed ones, each in its own dispose scope.
let time (warmup: int) (repeats: int) (f: unit -> unit) : float list =
    let run () =
        use _ = torch.NewDisposeScope()
        f ()
    for _ in 1..warmup do run ()
    [ for _ in 1..repeats ->
          let sw = Stopwatch.StartNew()
          run ()
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
      scope: string }

/// Forward+backward of the MoE layer and of a dense FFN with the same tokens and dims, interleaved so both see
/// the same machine load. The routing share = (layer - experts alone on the same sorted tokens) / layer.
let moe (dim: int) (hidden: int) (experts: int) (topK: int) (tokens: int64) (tokensPerImage: int64) (cap: Capacity)
        (policy: SecondPolicy) (scope: CapacityScope) (warmup: int) (repeats: int) : MoeBenchResult =
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
    let dd = Dd.cpu
    let g = Some(generator 0L dd)
    let moeP = Moe.init c dd g
    let dense = Mlp.init c dd g
    // A router that spreads tokens like a trained one: SF-MoE's N(0,1) gate on LayerNorm'd inputs.
    torch.manual_seed 0L |> ignore
    let b = tokens / tokensPerImage
    use z0 = torch.randn(b, tokensPerImage, int64 dim)
    use z = torch.nn.functional.layer_norm(z0, [| int64 dim |])
    use dy = torch.randn(b, tokensPerImage, int64 dim)
    let ctx = Ctx.train
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
    use xs0 = torch.randn(pairs, int64 dim)
    use dys = torch.randn(pairs, int64 dim)
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
        tm.AddRange(time 0 1 moeStep)
        td.AddRange(time 0 1 denseStep)
        te.AddRange(time 0 1 expertStep)
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
      scope = ConfigJson.scopeName scope }

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
      macs_per_image: int64
      step_gflop: float
      achieved_gflops: float
      matmul_gflops: float
      efficiency: float }

/// The machine's float32 matmul rate (2 * n^3 flops per n x n product), median of a few runs.
let matmulGflops (n: int64) =
    use a = torch.randn(n, n)
    use b = torch.randn(n, n)
    let ts = time 2 5 (fun () -> (torch.matmul(a, b)).Dispose())
    2.0 * float (n * n * n) / (median ts / 1000.0) / 1e9

/// One training step (forward, backward, Adam) on random tensors, median after warm-up; forward alone and
/// forward + backward timed too. Any backbone: a ViT (SF-MoE objective, Adam lr 1e-5) or a CNN baseline (ERM as
/// DomainBed: Adam lr 1e-3 for MNIST_CNN, 5e-5 for ResNet-50 with its BatchNorms frozen).
let step (arch: Config.Architecture) (name: string) (batch: int) (warmup: int) (repeats: int) : StepBenchResult =
    let dd = Dd.cpu
    let net = Networks.build arch dd 0L 0.0
    use _net = net.Module
    let kind, lr =
        match arch with
        | Config.VitArch _ -> Train.SfMoeAlg, 1e-5
        | Config.CnnArch { Kind = Config.MnistCnn } -> Train.Erm, 1e-3
        | Config.CnnArch _ -> Train.Erm, 5e-5
    use learner = new Train.Learner(net, kind, Optim.AdamL2, lr, 0.0, 0L, dd)
    torch.manual_seed 0L |> ignore
    let img = int64 (Config.Architecture.imgSize arch)
    use x = torch.randn(int64 batch, int64 (Config.Architecture.inChans arch), img, img)
    use y = torch.randint(int64 (Config.Architecture.numClasses arch), [| int64 batch |])
    let stepTimes = time warmup repeats (fun () -> learner.Update([ x ], [ y ]) |> ignore)
    net.SetTraining true
    let ctx = Ctx.train
    let fwdTimes =
        time warmup repeats (fun () ->
            let o = Networks.run net ctx false x
            o.Logits.Dispose()
            o.Aux.Dispose())
    // backward: forward + backward without the optimizer, minus forward
    let fbTimes =
        time warmup repeats (fun () ->
            let o = Networks.run net ctx false x
            use l = Losses.crossEntropy o.Logits y
            use total = if kind = Train.Erm then l.alias () else l + o.Aux
            total.backward ()
            o.Logits.Dispose()
            o.Aux.Dispose()
            learner.Optimizer.ZeroGrad())
    let stepMs, fwdMs, fbMs = median stepTimes, median fwdTimes, median fbTimes
    let macs = Summary.macsPerImage arch
    // forward = 2 * MACs flops; backward ~ 2x forward
    let gflop = 3.0 * 2.0 * float macs * float batch / 1e9
    let achieved = gflop / (stepMs / 1000.0)
    let mm = matmulGflops 1024L
    { step_ms = stepMs
      forward_ms = fwdMs
      backward_ms = fbMs - fwdMs
      optimizer_ms = stepMs - fbMs
      model = name
      batch_size = batch
      img_size = int img
      in_chans = Config.Architecture.inChans arch
      threads = torch.get_num_threads ()
      macs_per_image = macs
      step_gflop = gflop
      achieved_gflops = achieved
      matmul_gflops = mm
      efficiency = achieved / mm }
