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

/// An algorithm: network + optimizer + the generator of its random choices.
type Learner(net: Network, kind: AlgorithmKind, optimizer: OptimizerKind, lr: float, weightDecay: float, seed: int64, dd: Dd) =
    let parameters = net.Module.named_parameters () |> Seq.map (fun struct (n, p) -> n, p) |> Seq.toList
    let opt = new Optim.Adam(parameters, optimizer, lr, weightDecay)
    let rng = generator seed dd
    let stats = Collections.Generic.SortedDictionary<int, RoutingStats>()

    member _.Network = net
    member _.Optimizer = opt
    member _.Generator = rng
    member _.Kind = kind
    /// Routing statistics accumulated since the last `TakeRoutingStats`.
    member _.TakeRoutingStats() =
        let r = [ for KeyValue(b, s) in stats -> b, s ]
        stats.Clear()
        r

    /// One optimisation step on one minibatch per training environment (concatenated in env order).
    member _.Update(xs: Tensor list, ys: Tensor list) : Metrics =
        use scope = torch.NewDisposeScope()
        net.SetTraining true
        let x = torch.cat(List.toArray xs, 0L)
        let y = torch.cat(List.toArray ys, 0L)
        let o = forward net (Some rng) true x
        let ce = Losses.crossEntropy o.Logits y
        let loss = if kind = Erm then ce else add ce o.Aux
        opt.ZeroGrad()
        loss.backward ()
        opt.Update()
        for b, r in o.Routing do
            let s =
                match stats.TryGetValue b with
                | true, s -> s
                | _ ->
                    let s = { Load = Array.zeroCreate (int r.Load.shape[0]); DroppedTokens = 0.0; Tokens = 0.0 }
                    stats[b] <- s
                    s
            let load = r.Load.data<int64>().ToArray()
            for e in 0 .. load.Length - 1 do s.Load[e] <- s.Load[e] + float load[e]
            let anyKept = r.Kept.any(2L)
            s.Tokens <- s.Tokens + float (anyKept.numel ())
            s.DroppedTokens <- s.DroppedTokens + float (anyKept.logical_not().sum().item<int64> ())
            (r :> IDisposable).Dispose()
        { Loss = loss.item<float32> () |> float; Ce = ce.item<float32> () |> float; Aux = o.Aux.item<float32> () |> float }

    /// Logits in eval mode, without gradient. The caller disposes them.
    member _.Predict(x: Tensor, ?evalRng: torch.Generator) : Tensor =
        use scope = torch.NewDisposeScope()
        use _ = torch.no_grad ()
        net.SetTraining false
        let o = forward net evalRng false x
        scope.MoveToOuter o.Logits

    interface IDisposable with
        member _.Dispose() =
            rng.Dispose()
            (opt :> IDisposable).Dispose()
