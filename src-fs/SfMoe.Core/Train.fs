/// Training, DomainBed's contract: an algorithm holds a network and an optimizer; `update` takes one minibatch per
/// training environment and returns metrics as floats; `predict` returns logits. ERM minimises the mean
/// cross-entropy; SFMoE and GMoE add the sum of the sparse blocks' weighted balance losses (spec §5).
/// Each update runs in one dispose scope; only floats leave it.
module SfMoe.Core.Train

open System
open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Layers
open SfMoe.Core.Networks

type AlgorithmKind =
    /// Cross-entropy only.
    | Erm
    /// Cross-entropy + the sum of the sparse blocks' balance losses (SF-MoE).
    | SfMoeAlg
    /// The same objective (GMoE); its defaults differ in the hyperparameter registry.
    | GMoeAlg

module AlgorithmKind =
    let all = [ "ERM", Erm; "SFMoE", SfMoeAlg; "GMoE", GMoeAlg ]
    let name (a: AlgorithmKind) = all |> List.find (fun (_, x) -> x = a) |> fst
    let tryParse (s: string) = all |> List.tryFind (fun (n, _) -> String.Equals(n, s, StringComparison.OrdinalIgnoreCase)) |> Option.map snd

/// torch.optim.Adam (weight decay as L2 added to the gradient, on every parameter, as the authors) or AdamW.
type OptimizerKind = Optim.Kind

/// Per-expert load and dropped tokens of one sparse block, accumulated over updates.
type RoutingStats =
    { /// kept (token, choice) pairs per expert
      mutable Load: float[]
      /// tokens none of whose choices was processed (they pass through the residual only)
      mutable DroppedTokens: float
      mutable Tokens: float }

    member s.LoadFractions = let t = Array.sum s.Load in s.Load |> Array.map (fun l -> if t > 0.0 then l / t else 0.0)
    member s.DroppedFraction = if s.Tokens > 0.0 then s.DroppedTokens / s.Tokens else 0.0

/// Metrics of one update (floats only).
type Metrics =
    { Loss: float
      Ce: float
      Aux: float }

/// Routing statistics of one sparse block accumulated on the device since the last read.
type private StatsAccumulator =
    { Load: Tensor
      Dropped: Tensor
      mutable Tokens: int64 }

/// An algorithm: network + optimizer + the source of its random choices, and the precision and determinism of its
/// steps. Random draws inside a step come from the learner's CPU generator on the CPU (its state is saved with the
/// training state) and, on other devices, from a counter-based stream keyed by (seed, optimizer step) computed on the
/// device (see Tensors.HashStream): a run is a function of its seeds on any device, and a resumed run (same
/// optimizer step) continues it. The precision's TF32 flags are set on CUDA when the learner is built.
type Learner(net: Network, kind: AlgorithmKind, optimizer: OptimizerKind, lr: float, weightDecay: float, seed: int64, dd: Dd,
             precision: Precision, deterministic: bool) =
    let parameters = net.Module.named_parameters () |> Seq.map (fun struct (n, p) -> n, p) |> Seq.toList
    let opt = new Optim.Adam(parameters, optimizer, lr, weightDecay)
    let rng = generator seed dd
    let precisionNote = Precision.configure dd.Device precision
    let stats = Collections.Generic.SortedDictionary<int, StatsAccumulator>()

    /// The random stream of the next step.
    let stepRng () : Rng =
        if dd.Device.``type`` = DeviceType.CPU then Host rng
        else Hashed(HashStream(SplitMix.key seed opt.Step))

    let ctx (training: bool) (r: Rng option) =
        { Training = training; Rng = r; Precision = precision; Deterministic = deterministic }

    new(net, kind, optimizer, lr, weightDecay, seed, dd) = new Learner(net, kind, optimizer, lr, weightDecay, seed, dd, Fp32, false)

    member _.Network = net
    member _.Optimizer = opt
    /// The CPU generator of the steps' random draws on the CPU (saved and restored with the training state).
    member _.Generator = rng
    member _.Kind = kind
    member _.Precision = precision
    member _.Deterministic = deterministic
    /// What the precision means on this device (e.g. that tf32 changes nothing on a CPU), for the run's log.
    member _.PrecisionNote = precisionNote

    /// Routing statistics accumulated since the last `TakeRoutingStats` (reads the device: call it at evaluation).
    member _.TakeRoutingStats() =
        let r =
            [ for KeyValue(b, a) in stats ->
                  let load = (use c = a.Load.cpu () in c.data<int64>().ToArray())
                  let dropped = (use c = a.Dropped.cpu () in c.item<int64> ())
                  a.Load.Dispose()
                  a.Dropped.Dispose()
                  b, { Load = load |> Array.map float; DroppedTokens = float dropped; Tokens = float a.Tokens } ]
        stats.Clear()
        r

    /// One optimisation step on one minibatch per training environment (concatenated in env order), without reading
    /// anything back from the device: returns (loss, cross-entropy, aux) as a float32 tensor (3,) on the device
    /// (the caller disposes it). Routing statistics accumulate on the device.
    member _.Step(xs: Tensor list, ys: Tensor list) : Tensor =
        use scope = torch.NewDisposeScope()
        net.SetTraining true
        let x = torch.cat(List.toArray xs, 0L)
        let y = torch.cat(List.toArray ys, 0L)
        let o = run net (ctx true (Some(stepRng ()))) false x
        let ce = Losses.crossEntropy o.Logits y
        let aux = if o.Aux.dtype = ce.dtype then o.Aux else o.Aux.to_type(ce.dtype)
        let loss = if kind = Erm then ce else add ce aux
        opt.ZeroGrad()
        loss.backward ()
        opt.Update()
        use _ = torch.no_grad ()
        for b, st in o.Stats do
            match stats.TryGetValue b with
            | true, a ->
                a.Load.add_(st.Load, Scalars.oneInt) |> ignore
                a.Dropped.add_(st.Dropped, Scalars.oneInt) |> ignore
                a.Tokens <- a.Tokens + st.Tokens
            | _ ->
                stats[b] <-
                    { Load = st.Load.clone().DetachFromDisposeScope()
                      Dropped = st.Dropped.clone().DetachFromDisposeScope()
                      Tokens = st.Tokens }
        let metrics = torch.stack([| loss.detach (); ce.detach (); aux.detach () |], 0L)
        scope.MoveToOuter(metrics.to_type(torch.ScalarType.Float32))

    /// `Step`, then its metrics read as floats (one device synchronisation).
    member this.Update(xs: Tensor list, ys: Tensor list) : Metrics =
        use m = this.Step(xs, ys)
        use c = m.cpu ()
        let v = c.data<float32>().ToArray()
        { Loss = float v[0]; Ce = float v[1]; Aux = float v[2] }

    /// Logits in eval mode, without gradient, in the learner's precision (float32 logits). `evalRng` drives the
    /// random second-expert policy (a CPU generator; its draws are copied to the device). The caller disposes them.
    member _.Predict(x: Tensor, ?evalRng: torch.Generator) : Tensor =
        use scope = torch.NewDisposeScope()
        use _ = torch.no_grad ()
        net.SetTraining false
        let o = run net (ctx false (evalRng |> Option.map Host)) false x
        scope.MoveToOuter o.Logits

    interface IDisposable with
        member _.Dispose() =
            rng.Dispose()
            for KeyValue(_, a) in stats do
                a.Load.Dispose()
                a.Dropped.Dispose()
            (opt :> IDisposable).Dispose()
