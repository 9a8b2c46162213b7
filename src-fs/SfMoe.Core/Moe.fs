/// The Mixture-of-Experts layer of a sparse block: router -> decision -> dispatch to the experts (sorted slices, or
/// fixed-size slot buffers without host reads) -> gate-weighted combination; returns the output, the weighted balance
/// loss, routing statistics on the device and (on request) a routing record. docs/moe.md is the specification.
/// Memory is O(S * k * D) (sorted) or O(E * G * C * D) (padded): there is no (S, E, C) dispatch tensor.
module SfMoe.Core.Moe

open System
open TorchSharp
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Layers

type Params =
    { Gate: Router.Gate
      Experts: Experts.ExpertBank }

let init (c: VitConfig) (dd: Dd) (g: torch.Generator option) : Params =
    { Gate = Router.init c dd g; Experts = Experts.init c dd g }

/// State-dict names under a sparse block's `mlp`: gate.w_gating | gate.{cosine_projector.*, sim_matrix,
/// temperature}; experts.w1, experts.w2 (, experts.b1, experts.b2).
let tree (p: Params) : (string * Module) list = [ "gate", p.Gate.Module; "experts", p.Experts :> Module ]

/// What one sparse block did with its tokens (docs/moe.md §8).
type Record =
    { /// (B, N, k) int64 chosen experts.
      Index: Tensor
      /// (B, N, k) renormalised gates, before capacity dropping.
      Gate: Tensor
      /// (B, N, k) bool: dispatched and within capacity.
      Kept: Tensor
      /// (B, N, E) router probabilities (with gate noise in training).
      Probs: Tensor
      /// (E,) int64 kept (token, choice) pairs per expert.
      Load: Tensor
      /// Capacity per group and expert, -1 when dropless.
      Capacity: int64
      /// The balance loss before its weight.
      Balance: float }
    interface IDisposable with
        member this.Dispose() =
            for t in [ this.Index; this.Gate; this.Kept; this.Probs; this.Load ] do t.Dispose()

/// Routing statistics of one forward pass, on the device (nothing is read back).
type Stats =
    { /// (E,) int64 kept (token, choice) pairs per expert.
      Load: Tensor
      /// () int64 tokens none of whose choices was processed.
      Dropped: Tensor
      /// Tokens routed (S).
      Tokens: int64 }
    interface IDisposable with
        member this.Dispose() =
            this.Load.Dispose()
            this.Dropped.Dispose()

type Output =
    { /// (B, N, D)
      Y: Tensor
      /// aux_loss_weight * balance (scalar, with gradient)
      Aux: Tensor
      Record: Record option
      Stats: Stats }

/// How the kept (token, choice) pairs reach the experts.
type Dispatch =
    /// Pairs sorted by expert, each expert on its contiguous slice: compute only for kept pairs, but the slice sizes
    /// are read on the host (one device synchronisation per layer). The CPU default, and dropless routing anywhere.
    | Sorted
    /// Capacity-limited routing only: a fixed-size gather into (E, G*C, D) slot buffers, batched matmuls, and a
    /// gate-weighted gather back; shapes follow from the capacity, so nothing is read on the host. The default on
    /// accelerators (and on `meta`). Empty slots compute on a placeholder row whose output is never used.
    | Padded

/// The dispatch a layer uses on `device` for a capacity (-1: dropless).
let defaultDispatch (capacity: int64) (device: torch.Device) : Dispatch =
    if capacity >= 0L && device.``type`` <> DeviceType.CPU then Padded else Sorted

/// Sorted dispatch: (S, D) output. Pairs are ordered by a stable sort of (expert if kept, else E + expert), so the kept
/// pairs come first, grouped by expert in token order; `load` (E,) gives the slice sizes (the one host read).
let private dispatchSorted (ctx: Ctx) (m: MoeConfig) (p: Params) (x: Tensor) (index: Tensor) (gates: Tensor) (keptL: Tensor) (load: Tensor) : Tensor =
    let s = x.shape[0]
    let e = int64 m.NumExperts
    let k = index.shape[1]
    let counts = (use c = load.cpu () in c.data<int64>().ToArray())
    let pairs = Array.sum counts
    use stop = (float s).ToScalar()
    use tokens = torch.arange(stop, dtype = torch.ScalarType.Int64, device = x.device).unsqueeze(1L).expand(s, k).reshape(s * k)
    use dropped = keptL.neg().add_(Scalars.oneInt, Scalars.oneInt).mul_(Scalars.int e) // (S, k): 0 kept, E dropped
    use key = add index dropped
    use keyFlat = key.reshape(s * k)
    let struct (sortedKey, order) = torch.sort(keyFlat, 0L, false, true)
    use sortedKey = sortedKey
    use order = order
    use orderKept = order.narrow(0L, 0L, pairs)
    use tokSorted = tokens.index_select(0L, orderKept)
    use gatesFlat = gates.reshape(s * k)
    use gateSorted = gatesFlat.index_select(0L, orderKept) // with gradient
    use xc = Ctx.cast ctx x
    use xs = xc.index_select(0L, tokSorted) // (P, D)
    use ys = Experts.forwardSorted ctx m.ExpertDropout p.Experts xs counts // (P, D)
    use g = gateSorted.unsqueeze(1L)
    use yw = ys * g
    use zeros = torch.zeros_like(x)
    zeros.index_add(0L, tokSorted, yw, Scalars.one) // (S, D)

/// Padded dispatch: (S, D) output through (E, G*C, D) slot buffers; pair (s, j) of group g sits at row
/// index[s, j] * G*C + g*C + slot[s, j].
let private dispatchPadded (ctx: Ctx) (m: MoeConfig) (p: Params) (x: Tensor) (groups: int64) (decision: Router.Decision) (gates: Tensor) (keptL: Tensor) : Tensor =
    let s, d = x.shape[0], x.shape[1]
    let e = int64 m.NumExperts
    let k = decision.Index.shape[1]
    let n = s / groups
    let cap = decision.Capacity
    let rows = groups * cap // per expert
    let slots = e * rows
    use slot = match decision.Slot with Some t -> t.alias () | None -> invalidOp "padded dispatch needs capacity slots"
    use gStop = (float groups).ToScalar()
    use groupBase = torch.arange(gStop, dtype = torch.ScalarType.Int64, device = x.device).mul_(Scalars.int cap) // (G,)
    use base1 = groupBase.unsqueeze(1L).expand(groups, n).reshape(s, 1L) // (S, 1): g*C
    use expertBase = decision.Index.mul(Scalars.int rows)
    use pos0 = add expertBase base1
    use pos = add pos0 slot // (S, k), valid where kept
    use posKept = pos * keptL // dropped pairs read row 0 (with weight 0)
    // Which token fills each slot: kept pairs are scattered in; dropped ones go to a trash entry past the end.
    // Empty slots keep a placeholder token (slot mod S, spread so that their zero gradients do not pile up on one row).
    use notKept = keptL.neg().add_(Scalars.oneInt, Scalars.oneInt)
    use trash = notKept.mul(Scalars.int slots)
    use target = add posKept trash
    use sStop = (float (slots + 1L)).ToScalar()
    use src0 = torch.arange(sStop, dtype = torch.ScalarType.Int64, device = x.device).remainder_(Scalars.int s)
    use tStop = (float s).ToScalar()
    use tokens = torch.arange(tStop, dtype = torch.ScalarType.Int64, device = x.device).unsqueeze(1L).expand(s, k).reshape(s * k)
    use targetFlat = target.reshape(s * k)
    use src = src0.scatter(0L, targetFlat, tokens)
    use srcSlots = src.narrow(0L, 0L, slots)
    use xc = Ctx.cast ctx x
    use xs = xc.index([| srcSlots |]) // (E*G*C, D)
    use xb = xs.view(e, rows, d)
    use ys = Experts.forwardPadded ctx m.ExpertDropout p.Experts xb // (E, G*C, D)
    use flat = ys.view(slots, d)
    use posFlat = posKept.reshape(s * k)
    use picked = flat.index([| posFlat |]) // (S*k, D)
    use pickedK = picked.view(s, k, d)
    use keptF = keptL.to_type(gates.dtype)
    use w = gates * keptF // (S, k), with gradient through the gates
    use w3 = w.unsqueeze(-1L)
    use yw = pickedK * w3 // (S, k, D) in the gates' dtype (float32)
    yw.sum([| 1L |]) // (S, D)

/// z (B, N, D) -> y (B, N, D), aux. `draws` overrides the random numbers (tests); otherwise they come from ctx.
/// `dispatch` overrides the device's default (tests). The layer's many small routing temporaries live in one dispose
/// scope; only the outputs leave it. With Padded dispatch nothing is read on the host unless a record is asked for.
let forwardVia (dispatch: Dispatch option) (c: VitConfig) (ctx: Ctx) (p: Params) (draws: Router.Draws) (wantRecord: bool) (z: Tensor) : Output =
    use scope = torch.NewDisposeScope()
    let m = c.Moe
    let b, n, d = z.shape[0], z.shape[1], z.shape[2]
    let s = b * n
    let e = int64 m.NumExperts
    use x = z.reshape(s, d) // (S, D)
    use xf = if x.dtype = torch.ScalarType.BFloat16 || x.dtype = torch.ScalarType.Float16 then x.to_type(torch.ScalarType.Float32) else x.alias ()
    use logits = Router.logits p.Gate xf // (S, E), float32
    use noisy =
        if ctx.Training && m.GateNoise > 0.0 then
            use eps =
                match draws.Noise with
                | Some t -> t.reshape(s, e).``to``(logits.dtype, logits.device)
                | None -> randn ctx [| s; e |] logits
            use scaled = eps.mul(Scalars.constant (m.GateNoise / float e))
            add logits scaled
        else logits.alias ()
    use probs = noisy.softmax(1L) // (S, E)
    use index = Router.choose m.TopK probs // (S, k)
    use gates = Router.gates probs index // (S, k), with gradient
    use g2 = if m.TopK = 2 then gates.select(1L, 1L).detach() else null
    let groups = match m.Scope with PerImage _ -> b | PerBatch -> 1L
    use decision = Router.decide m ctx draws groups probs index (Option.ofObj g2)
    use keptL = decision.Kept.to_type(torch.ScalarType.Int64) // (S, k)
    // Statistics on the device: kept pairs per expert, tokens with no kept choice.
    use load =
        use idxFlat = index.reshape(-1L)
        use keptFlat = keptL.reshape(-1L)
        torch.zeros(e, dtype = torch.ScalarType.Int64, device = z.device).scatter_add_(0L, idxFlat, keptFlat) // (E,)
    use droppedTokens =
        use anyKept = decision.Kept.any(1L)
        use keptTokens = anyKept.sum(torch.ScalarType.Int64)
        use sS = s.ToScalar()
        keptTokens.neg().add_(sS, Scalars.oneInt) // ()
    let dispatch = defaultArg dispatch (defaultDispatch decision.Capacity z.device)
    use out =
        match dispatch with
        | Padded when decision.Capacity >= 0L -> dispatchPadded ctx m p xf groups decision gates keptL
        | _ -> dispatchSorted ctx m p xf index gates keptL load
    use balance =
        match m.AuxLoss with
        | GShardLoss ->
            use top1 = index.select(1L, 0L)
            Losses.gshard groups probs top1
        | LoadImportanceLoss ->
            use last = index.narrow(1L, int64 m.TopK - 1L, 1L)
            Losses.loadImportance m.GateNoise logits noisy last
    let aux = balance.mul(Scalars.constant m.AuxLossWeight)
    let record =
        if not wantRecord then None
        else
            let k = int64 m.TopK
            Some
                { Index = index.view(b, n, k).clone ()
                  Gate = gates.detach().view(b, n, k).clone ()
                  Kept = decision.Kept.view(b, n, k).clone ()
                  Probs = probs.detach().view(b, n, e).clone ()
                  Load = load.clone ()
                  Capacity = decision.Capacity
                  Balance = balance.item<float32> () |> float }
    let y = scope.MoveToOuter(out.view(b, n, d))
    let aux = scope.MoveToOuter aux
    let stats = { Load = scope.MoveToOuter(load.alias ()); Dropped = scope.MoveToOuter(droppedTokens.alias ()); Tokens = s }
    let record =
        record
        |> Option.map (fun r ->
            { r with
                Index = scope.MoveToOuter r.Index
                Gate = scope.MoveToOuter r.Gate
                Kept = scope.MoveToOuter r.Kept
                Probs = scope.MoveToOuter r.Probs
                Load = scope.MoveToOuter r.Load })
    { Y = y; Aux = aux; Record = record; Stats = stats }

/// z (B, N, D) -> y, aux with the device's default dispatch; `draws` overrides the random numbers (tests).
let forwardWith (c: VitConfig) (ctx: Ctx) (p: Params) (draws: Router.Draws) (wantRecord: bool) (z: Tensor) : Output =
    forwardVia None c ctx p draws wantRecord z

/// z (B, N, D) -> y, aux, drawing random numbers from the context.
let forward (c: VitConfig) (ctx: Ctx) (p: Params) (wantRecord: bool) (z: Tensor) : Output =
    forwardWith c ctx p Router.noDraws wantRecord z
