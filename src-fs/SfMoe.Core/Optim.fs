/// Adam (torch.optim.Adam: weight decay added to the gradient, L2) and AdamW (decoupled decay), written here rather
/// than using TorchSharp's so that (a) every Scalar stays alive across the native calls that read it (TorchSharp's
/// optimizers pass temporary Scalars, which the GC may finalize mid-call; see Tensors.Scalars), and (b) the state is
/// named tensors that checkpoints save and restore exactly. Same arithmetic, in the same order, as PyTorch's
/// single-tensor Adam.
module SfMoe.Core.Optim

open System
open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe

type Kind =
    | AdamL2
    | AdamW

/// Adam's moments for one parameter.
type private Slot = { Param: Parameter; ExpAvg: Tensor; ExpAvgSq: Tensor }

/// An Adam/AdamW optimizer over named parameters.
type Adam(parameters: (string * Parameter) list, kind: Kind, lr: float, weightDecay: float, ?beta1: float, ?beta2: float, ?eps: float) =
    let beta1 = defaultArg beta1 0.9
    let beta2 = defaultArg beta2 0.999
    let eps = defaultArg eps 1e-8
    let slots =
        [| for name, p in parameters ->
               name,
               { Param = p
                 ExpAvg = torch.zeros_like(p).DetachFromDisposeScope()
                 ExpAvgSq = torch.zeros_like(p).DetachFromDisposeScope() } |]
    let mutable step = 0L
    // Constants alive for the optimizer's lifetime.
    let sBeta1 = beta1.ToScalar()
    let sOneMinusBeta1 = (1.0 - beta1).ToScalar()
    let sBeta2 = beta2.ToScalar()
    let sOneMinusBeta2 = (1.0 - beta2).ToScalar()
    let sEps = eps.ToScalar()
    let sWd = weightDecay.ToScalar()
    let sDecoupled = (1.0 - lr * weightDecay).ToScalar()

    member _.Step = step
    member _.LearningRate = lr

    /// Clear the gradients of every parameter.
    member _.ZeroGrad() =
        for _, s in slots do
            let g = s.Param.grad
            if not (isNull g) then g.zero_() |> ignore

    /// One update of every parameter that has a gradient.
    member _.Update() =
        use _ = torch.no_grad ()
        step <- step + 1L
        let bc1 = 1.0 - Math.Pow(beta1, float step)
        let bc2 = 1.0 - Math.Pow(beta2, float step)
        use sBc2Sqrt = (sqrt bc2).ToScalar()
        use sStep = (-lr / bc1).ToScalar()
        for _, s in slots do
            let p = s.Param
            let g0 = p.grad
            if not (isNull g0) then
                use g =
                    match kind with
                    | AdamL2 when weightDecay <> 0.0 -> g0.add(p, sWd)
                    | _ -> g0.alias ()
                if kind = AdamW && weightDecay <> 0.0 then p.mul_(sDecoupled) |> ignore
                s.ExpAvg.mul_(sBeta1).add_(g, sOneMinusBeta1) |> ignore
                s.ExpAvgSq.mul_(sBeta2).addcmul_(g, g, sOneMinusBeta2) |> ignore
                use sq = s.ExpAvgSq.sqrt ()
                use denom = sq.div_(sBc2Sqrt).add_(sEps, Scalars.one)
                p.addcdiv_(s.ExpAvg, denom, sStep) |> ignore

    /// The state as named tensors (views of the live state: copy before mutating) and the step count.
    member _.State: (string * Tensor) list * int64 =
        [ for name, s in slots do
              yield "exp_avg." + name, s.ExpAvg
              yield "exp_avg_sq." + name, s.ExpAvgSq ], step

    /// Restore a state written by `State`; every parameter's moments must be present with the right shape.
    member _.LoadState(tensors: (string * Tensor) list, stepCount: int64) =
        let byName = dict tensors
        use _ = torch.no_grad ()
        for name, s in slots do
            for key, target in [ "exp_avg." + name, s.ExpAvg; "exp_avg_sq." + name, s.ExpAvgSq ] do
                match byName.TryGetValue key with
                | true, t when t.shape = target.shape -> target.copy_(t) |> ignore
                | true, t -> Fail.checkpoint "optimizer state %s: expected shape %A, found %A" key target.shape t.shape
                | _ -> Fail.checkpoint "optimizer state lacks %s" key
        step <- stepCount

    interface IDisposable with
        member _.Dispose() =
            for _, s in slots do
                s.ExpAvg.Dispose()
                s.ExpAvgSq.Dispose()
            for sc in [ sBeta1; sOneMinusBeta1; sBeta2; sOneMinusBeta2; sEps; sWd; sDecoupled ] do sc.Dispose()
