/// Adam (torch.optim.Adam: weight decay added to the gradient, L2) and AdamW (decoupled decay) as multi-tensor
/// updates: the parameters of one dtype and device live in one flat buffer (each parameter is a view of it, `set_`),
/// their gradients in another (each `.grad` is a view that autograd accumulates into), and the moments in two more,
/// so a step is ~9 kernels per buffer, not per parameter. Written here rather than using TorchSharp's optimizers so
/// that (a) every Scalar stays alive across the native calls that read it (TorchSharp's optimizers pass temporary
/// Scalars, which the GC may finalize mid-call; see Tensors.Scalars), and (b) the state is named tensors that
/// checkpoints save and restore exactly. Same arithmetic, in the same order, as PyTorch's single-tensor Adam.
/// A step updates the parameters that have a gradient (torch.optim skips those whose `.grad` is None; the moments
/// of a parameter whose gradient is dropped after it had one keep their per-step decay here); the moments, the master
/// weights and the update stay in the parameters' dtype (float32).
module SfMoe.Core.Optim

open System
open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe

type Kind =
    | AdamL2
    | AdamW

/// One parameter's place in its group's flat buffers.
type private Slot =
    { Name: string
      Param: Parameter
      Offset: int64
      Numel: int64
      /// Views of the flat buffers with the parameter's shape.
      Grad: Tensor
      ExpAvg: Tensor
      ExpAvgSq: Tensor
      /// Had a gradient at the last update (the flat gradient view is then its `.grad`).
      mutable Active: bool }

/// Parameters of one dtype and device, flattened.
type private Group =
    { Slots: Slot[]
      Params: Tensor
      Grads: Tensor
      ExpAvg: Tensor
      ExpAvgSq: Tensor
      /// 1 on parameters with a gradient, 0 elsewhere (only while some parameter has none and decay is on).
      mutable Mask: Tensor option }

let private flatGroup (members: (string * Parameter)[]) : Group =
    let p0 = snd members[0]
    let total = members |> Array.sumBy (fun (_, p) -> p.numel ())
    let dtype, device = p0.dtype, p0.device
    let buffer () = torch.zeros(total, dtype = dtype, device = device).DetachFromDisposeScope()
    let flat = buffer ()
    let grads = buffer ()
    let m = buffer ()
    let v = buffer ()
    use _ = torch.no_grad ()
    let mutable off = 0L
    let slots =
        [| for name, p in members ->
               let n = p.numel ()
               let shape = p.shape
               let view (t: Tensor) = (use s = t.narrow(0L, off, n) in s.view(shape)).DetachFromDisposeScope()
               use pv = view flat
               pv.copy_(p) |> ignore
               // The parameter now shares the flat buffer's storage (same TensorImpl, so modules see it).
               p.set_(pv) |> ignore
               let slot =
                   { Name = name; Param = p; Offset = off; Numel = n; Grad = view grads; ExpAvg = view m; ExpAvgSq = view v
                     Active = false }
               off <- off + n
               slot |]
    { Slots = slots; Params = flat; Grads = grads; ExpAvg = m; ExpAvgSq = v; Mask = None }

/// An Adam/AdamW optimizer over named parameters. The parameters are re-seated onto flat buffers: build it after the
/// model is on its device (a later `.to(device)` replaces the parameters and detaches them from the optimizer).
type Adam(parameters: (string * Parameter) list, kind: Kind, lr: float, weightDecay: float, ?beta1: float, ?beta2: float, ?eps: float) =
    let beta1 = defaultArg beta1 0.9
    let beta2 = defaultArg beta2 0.999
    let eps = defaultArg eps 1e-8
    let groups =
        parameters
        |> List.toArray
        |> Array.groupBy (fun (_, p) -> p.dtype, string p.device)
        |> Array.map (fun (_, ms) -> flatGroup ms)
    let mutable step = 0L
    // Constants alive for the optimizer's lifetime.
    let sBeta1 = beta1.ToScalar()
    let sOneMinusBeta1 = (1.0 - beta1).ToScalar()
    let sBeta2 = beta2.ToScalar()
    let sOneMinusBeta2 = (1.0 - beta2).ToScalar()
    let sEps = eps.ToScalar()
    let sWd = weightDecay.ToScalar()
    let sDecoupled = (1.0 - lr * weightDecay).ToScalar()
    let sLrWd = (-lr * weightDecay).ToScalar()

    /// The storage address of a tensor's first element (host metadata, no device access), when its dtype and device
    /// allow.
    let address (t: Tensor) : nativeint option =
        match t.dtype with
        | _ when isMeta t -> None // no storage: treat every gradient as new (copying costs nothing there)
        | torch.ScalarType.Float32 -> Some((use st = t.storage<float32> () in st.data_ptr ()) + nativeint (t.storage_offset () * 4L))
        | torch.ScalarType.Float64 -> Some((use st = t.storage<float> () in st.data_ptr ()) + nativeint (t.storage_offset () * 8L))
        | _ -> None

    /// Which parameters have a gradient now (torch.optim skips those whose `.grad` is None). A gradient that is not
    /// the parameter's flat view (allocated by autograd for a parameter that had none, or set by the caller) is copied
    /// into the view, which becomes its `.grad`: from then on autograd accumulates into the flat buffer. Host-side
    /// handle checks only; the decay mask is rebuilt when the set of parameters with gradients changes.
    let syncGrads () =
        use _ = torch.no_grad ()
        let mutable changed = false
        for g in groups do
            for s in g.Slots do
                use own = s.Param.grad
                let active = not (isNull own)
                if active then
                    let ours =
                        match address own, address s.Grad with
                        | Some a, Some b -> a = b && own.shape = s.Grad.shape
                        | _ -> false
                    if not ours then
                        s.Grad.copy_(own) |> ignore
                        s.Param.grad <- s.Grad
                if active <> s.Active then
                    s.Active <- active
                    changed <- true
        if changed && weightDecay <> 0.0 then
            for g in groups do
                g.Mask |> Option.iter (fun m -> m.Dispose())
                g.Mask <-
                    if g.Slots |> Array.forall (fun s -> s.Active) then None
                    else
                        let mask = torch.zeros_like(g.Params).DetachFromDisposeScope()
                        for s in g.Slots do
                            if s.Active then
                                use seg = mask.narrow(0L, s.Offset, s.Numel)
                                seg.fill_(Scalars.one) |> ignore
                        Some mask

    member _.Step = step
    member _.LearningRate = lr
    /// Number of flat buffers (parameter groups by dtype and device): the kernels of a step scale with this.
    member _.Groups = groups.Length

    /// Clear the gradients: one kernel per group. The flat views are (re)installed as the active parameters'
    /// gradients, so a `zero_grad` elsewhere that dropped them does no harm.
    member _.ZeroGrad() =
        use _ = torch.no_grad ()
        for g in groups do
            g.Grads.zero_() |> ignore
            for s in g.Slots do
                if s.Active then s.Param.grad <- s.Grad
                else
                    use own = s.Param.grad
                    if not (isNull own) then own.zero_() |> ignore

    /// One update of every parameter that has (ever) received a gradient.
    member _.Update() =
        syncGrads ()
        use _ = torch.no_grad ()
        step <- step + 1L
        let bc1 = 1.0 - Math.Pow(beta1, float step)
        let bc2 = 1.0 - Math.Pow(beta2, float step)
        use sBc2Sqrt = (sqrt bc2).ToScalar()
        use sStep = (-lr / bc1).ToScalar()
        for grp in groups do
            if grp.Slots |> Array.exists (fun s -> s.Active) then
                let p = grp.Params
                use g =
                    match kind, grp.Mask with
                    | AdamL2, Some mask when weightDecay <> 0.0 -> grp.Grads.addcmul(p, mask, sWd)
                    | AdamL2, None when weightDecay <> 0.0 -> grp.Grads.add(p, sWd)
                    | _ -> grp.Grads.alias ()
                if kind = AdamW && weightDecay <> 0.0 then
                    match grp.Mask with
                    | Some mask ->
                        // p * (1 - lr * wd * mask), as one kernel: p + (-lr * wd) * p * mask
                        p.addcmul_(p, mask, sLrWd) |> ignore
                    | None -> p.mul_(sDecoupled) |> ignore
                grp.ExpAvg.mul_(sBeta1).add_(g, sOneMinusBeta1) |> ignore
                grp.ExpAvgSq.mul_(sBeta2).addcmul_(g, g, sOneMinusBeta2) |> ignore
                use sq = grp.ExpAvgSq.sqrt ()
                use denom = sq.div_(sBc2Sqrt).add_(sEps, Scalars.one)
                p.addcdiv_(grp.ExpAvg, denom, sStep) |> ignore

    /// The state as named tensors (views of the live state: copy before mutating) and the step count.
    member _.State: (string * Tensor) list * int64 =
        [ for g in groups do
              for s in g.Slots do
                  yield "exp_avg." + s.Name, s.ExpAvg
                  yield "exp_avg_sq." + s.Name, s.ExpAvgSq ], step

    /// Restore a state written by `State`; every parameter's moments must be present with the right shape.
    member _.LoadState(tensors: (string * Tensor) list, stepCount: int64) =
        let byName = dict tensors
        use _ = torch.no_grad ()
        for g in groups do
            for s in g.Slots do
                for key, target in [ "exp_avg." + s.Name, s.ExpAvg; "exp_avg_sq." + s.Name, s.ExpAvgSq ] do
                    match byName.TryGetValue key with
                    | true, t when t.shape = target.shape -> target.copy_(t) |> ignore
                    | true, t -> Fail.checkpoint "optimizer state %s: expected shape %A, found %A" key target.shape t.shape
                    | _ -> Fail.checkpoint "optimizer state lacks %s" key
        step <- stepCount

    interface IDisposable with
        member _.Dispose() =
            for g in groups do
                for s in g.Slots do
                    s.Grad.Dispose()
                    s.ExpAvg.Dispose()
                    s.ExpAvgSq.Dispose()
                g.Mask |> Option.iter (fun m -> m.Dispose())
                g.Grads.Dispose()
                g.ExpAvg.Dispose()
                g.ExpAvgSq.Dispose()
                g.Params.Dispose() // our handle only: the parameters keep the storage alive
            for sc in [ sBeta1; sOneMinusBeta1; sBeta2; sOneMinusBeta2; sEps; sWd; sDecoupled; sLrWd ] do sc.Dispose()
