/// Routers: from token rows to expert logits, and the routing decision (top-k choices, renormalised gates,
/// second-expert policy, capacity and slots). docs/moe.md §1-5 is the specification; `route` never builds a
/// (S, E, C) one-hot tensor: slots are cumulative counts over (groups, tokens, E) masks.
module SfMoe.Core.Router

open System
open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Layers

/// Linear softmax gate (lucidrains / SF-MoE): w_gating (D, E), init N(0, 1).
type LinearGate(dim: int, numExperts: int, dd: Dd, g: torch.Generator option) as this =
    inherit Module("gate")

    do
        let w = parameter dd [| int64 dim; int64 numExperts |]
        Init.normal 0.0 1.0 g w
        this.register_parameter("w_gating", w)

    member this.WGating: Tensor = this.get_parameter "w_gating"

/// Cosine gate (tutel cosine_top / GMoE): cosine_projector Linear(D -> P), sim_matrix (P, E) ~ N(0, 0.01^2),
/// temperature (1,) = ln 2; logits = normalize(proj x) @ normalize(sim, dim 0) * exp(min(temperature, ln 100)).
type CosineGate(dim: int, numExperts: int, projDim: int, dd: Dd, g: torch.Generator option) as this =
    inherit Module("gate")

    // The ViT init (trunc-normal 0.02, zero bias) reaches the projector, as in GMoE.
    let proj = linear dd g dim projDim true

    do
        this.register_module("cosine_projector", proj)
        let sim = parameter dd [| int64 projDim; int64 numExperts |]
        Init.normal 0.0 0.01 g sim
        this.register_parameter("sim_matrix", sim)
        let t = parameter dd [| 1L |]
        use _ = torch.no_grad ()
        t.fill_(Scalars.constant (log 2.0)) |> ignore
        this.register_parameter("temperature", t)

    /// Registration is explicit (above): keep TorchSharp from also registering the `proj` field by reflection.
    override _.RegisterComponents() = ()

    member _.Projector = proj
    member this.SimMatrix: Tensor = this.get_parameter "sim_matrix"
    member this.Temperature: Tensor = this.get_parameter "temperature"

type Gate =
    | Linear of LinearGate
    | Cosine of CosineGate

    member this.Module: Module =
        match this with
        | Linear g -> g :> Module
        | Cosine g -> g :> Module

let init (c: VitConfig) (dd: Dd) (g: torch.Generator option) : Gate =
    match c.Moe.Router with
    | LinearRouter -> Linear(new LinearGate(c.EmbedDim, c.Moe.NumExperts, dd, g))
    | CosineRouter projDim -> Cosine(new CosineGate(c.EmbedDim, c.Moe.NumExperts, projDim, dd, g))

/// Router logits: (S, D) -> (S, E), computed in float32.
let logits (gate: Gate) (x: Tensor) : Tensor =
    match gate with
    | Linear g -> torch.matmul(x, g.WGating)
    | Cosine g ->
        use p = g.Projector.forward x // (S, P)
        use pn = normalize 1L p
        use sn = normalize 0L g.SimMatrix // (P, E)
        use cos = torch.matmul(pn, sn) // (S, E)
        use clamped = clampMax (log 100.0) g.Temperature
        use scale = clamped.exp ()
        cos * scale

/// Random draws the router consumes. Missing draws are taken from the context's generator.
type Draws =
    { /// (S,) U[0,1) for the random second-expert policy.
      Uniform: Tensor option
      /// (S, E) standard normal gate noise (scaled by gate_noise / E).
      Noise: Tensor option }

let noDraws = { Uniform = None; Noise = None }

/// The routing decision for S tokens in G groups of n.
type Decision =
    { /// (S, k) int64 chosen experts; column 1 is the second choice.
      Index: Tensor
      /// (S, k) bool: the choice is dispatched and within capacity.
      Kept: Tensor
      /// (S, k) int64 slot of each choice in its expert's queue within its group (meaningful where Kept); None when
      /// dropless.
      Slot: Tensor option
      /// Capacity per group and expert; -1 when dropless.
      Capacity: int64 }
    interface IDisposable with
        member this.Dispose() =
            this.Index.Dispose()
            this.Kept.Dispose()
            this.Slot |> Option.iter (fun t -> t.Dispose())

/// Capacity per group of n tokens (docs/moe.md §4); -1 when dropless.
let capacity (m: MoeConfig) (training: bool) (n: int64) : int64 =
    let e = int64 m.NumExperts
    match (if training then m.CapacityTrain else m.CapacityEval) with
    | Dropless -> -1L
    | Factor cf ->
        match m.Scope with
        | PerImage minCapacity -> max (int64 minCapacity) (min n (int64 (floor (float n * cf / float e))))
        | PerBatch -> int64 m.TopK * int64 (cf * float ((n + e - 1L) / e))

/// Exclusive cumulative count along the token axis of (G, n, E) int64 masks, visited in `order` (G, n) when
/// given (batch-prioritised routing): result[g, t, e] = number of mask entries of expert e visited before t.
let private exclusiveCounts (order: Tensor option) (mask: Tensor) : Tensor =
    match order with
    | None ->
        use c = mask.cumsum(1L)
        sub c mask
    | Some ord ->
        let e = mask.shape[2]
        use idx = ord.unsqueeze(-1L).expand(-1L, -1L, e) // (G, n, E)
        use sorted = mask.gather(1L, idx)
        use c = sorted.cumsum(1L)
        use ex = sub c sorted
        torch.zeros_like(mask).scatter_(1L, idx, ex)

/// Top-k expert choices from probs (S, E): (S, k) int64; the second choice is the best expert other than the first
/// (first maximal index on ties).
let choose (k: int) (probs: Tensor) : Tensor =
    use _ = torch.no_grad ()
    let i1 = probs.argmax(1L, true) // (S, 1)
    if k = 1 then i1
    else
        use first = torch.nn.functional.one_hot(i1.squeeze(1L), probs.shape[1]).to_type(torch.ScalarType.Bool)
        use masked = probs.masked_fill(first, Scalars.constant -1.0)
        use i2 = masked.argmax(1L, true)
        let r = torch.cat([| i1; i2 |], 1L)
        i1.Dispose()
        r

/// Gate values for the chosen experts, with gradient: (S, k); top-2 gates are renormalised to sum to 1
/// (g / (g1 + g2 + 1e-9), lucidrains).
let gates (probs: Tensor) (index: Tensor) : Tensor =
    let g = probs.gather(1L, index)
    if index.shape[1] = 1L then g
    else
        use g = g
        use denom = g.sum([| 1L |], true).add_(Scalars.constant 1e-9, Scalars.one)
        g / denom

/// Top-k choices, second-expert policy, capacity and slots for probs (S, E), with no gradient.
/// `gate2` (S,) is the renormalised second gate (k = 2), used by the threshold and random policies.
let decide (m: MoeConfig) (ctx: Ctx) (draws: Draws) (groups: int64) (probs: Tensor) (index: Tensor) (gate2: Tensor option) : Decision =
    use _ = torch.no_grad ()
    let s, e = probs.shape[0], probs.shape[1]
    let n = s / groups
    let k = m.TopK
    let cap = capacity m ctx.Training n
    // Second-expert dispatch mask m2 (S,).
    let m2 =
        match k, gate2 with
        | 2, Some g2 ->
            Some(
                match m.SecondPolicy with
                | SecondAll -> torch.ones(s, dtype = torch.ScalarType.Bool, device = probs.device)
                | SecondNone -> torch.zeros(s, dtype = torch.ScalarType.Bool, device = probs.device)
                | SecondThreshold threshold -> g2.gt(Scalars.constant threshold)
                | SecondRandom threshold ->
                    use u =
                        match draws.Uniform with
                        | Some u -> u.reshape(s).``to``(g2.dtype, g2.device)
                        | None -> rand ctx [| s |] g2
                    use ratio = g2.div(Scalars.constant (max threshold 1e-9))
                    u.lt(ratio))
        | _ -> None
    let kept, slot =
        if cap < 0L then
            use first = torch.ones(s, 1L, dtype = torch.ScalarType.Bool, device = probs.device)
            match m2 with
            | Some m2 ->
                use second = m2.view(s, 1L)
                torch.cat([| first; second |], 1L), None
            | None -> first.alias (), None
        else
            use order =
                if m.BatchPrioritized then
                    use maxp = probs.amax([| 1L |]).view(groups, n) // (G, n)
                    let struct (v, i) = torch.sort(maxp, 1L, true, true) // descending, stable: ties in token order
                    v.Dispose()
                    i
                else null
            let order = Option.ofObj order
            use idx1 = index.select(1L, 0L)
            use oh1 = torch.nn.functional.one_hot(idx1, e)
            use mask1 = oh1.view(groups, n, e) // (G, n, E) int64
            use pos1all = exclusiveCounts order mask1
            use pos1m = pos1all * mask1
            use slot1 = pos1m.sum([| 2L |]) // (G, n)
            use kept1 = slot1.lt(Scalars.constant (float cap)) // (G, n)
            use kept1s = kept1.view(s, 1L)
            use slot1s = slot1.view(s, 1L)
            match m2 with
            | None -> kept1s.alias (), Some(slot1s.alias ())
            | Some m2 ->
                use idx2 = index.select(1L, 1L)
                use oh2 = torch.nn.functional.one_hot(idx2, e)
                use oh2g = oh2.view(groups, n, e)
                use m2g = m2.view(groups, n, 1L).to_type(torch.ScalarType.Int64)
                use mask2 = oh2g * m2g
                // Second choices queue after the first choices of their expert: the kept ones per image
                // (lucidrains), all of them per batch (tutel).
                use firstCount =
                    match m.Scope with
                    | PerImage _ ->
                        use k1 = kept1.unsqueeze(-1L).to_type(torch.ScalarType.Int64)
                        use kept1m = mask1 * k1
                        kept1m.sum([| 1L |], true) // (G, 1, E)
                    | PerBatch -> mask1.sum([| 1L |], true)
                use pos2all = exclusiveCounts order mask2
                use pos2 = add pos2all firstCount
                use pos2m = pos2 * mask2
                use slot2 = pos2m.sum([| 2L |]) // (G, n)
                use under = slot2.lt(Scalars.constant (float cap))
                use m2n = m2.view(groups, n)
                use kept2 = under.bitwise_and(m2n)
                use kept2s = kept2.view(s, 1L)
                use slot2s = slot2.view(s, 1L)
                torch.cat([| kept1s; kept2s |], 1L), Some(torch.cat([| slot1s; slot2s |], 1L))
    m2 |> Option.iter (fun t -> t.Dispose())
    { Index = index.alias (); Kept = kept; Slot = slot; Capacity = cap }
