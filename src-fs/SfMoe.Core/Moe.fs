/// The Mixture-of-Experts layer of a sparse block: router -> decision -> sorted dispatch to the experts ->
/// gate-weighted scatter-add; returns the output, the weighted balance loss and (on request) a routing record.
/// docs/moe.md is the specification. Memory is O(S * k * D): there is no (S, E, C) dispatch tensor.
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

type Output =
    { /// (B, N, D)
      Y: Tensor
      /// aux_loss_weight * balance (scalar, with gradient)
      Aux: Tensor
      Record: Record option }

/// z (B, N, D) -> y (B, N, D), aux. `draws` overrides the random numbers (tests); otherwise they come from ctx.
/// The layer's many small routing temporaries live in one dispose scope; only the outputs leave it.
let forwardWith (c: VitConfig) (ctx: Ctx) (p: Params) (draws: Router.Draws) (wantRecord: bool) (z: Tensor) : Output =
    use scope = torch.NewDisposeScope()
    let m = c.Moe
    let b, n, d = z.shape[0], z.shape[1], z.shape[2]
    let s = b * n
    let e = int64 m.NumExperts
    use x = z.reshape(s, d) // (S, D)
    use logits = Router.logits p.Gate x // (S, E)
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
    // Kept (token, choice) pairs, sorted by expert (stable): contiguous slices per expert.
    use stop = (float s).ToScalar()
    use tokens = torch.arange(stop, dtype = torch.ScalarType.Int64, device = z.device).unsqueeze(1L).expand(s, int64 m.TopK)
    use pairTok = tokens.masked_select(decision.Kept)
    use pairExp = index.masked_select(decision.Kept)
    use pairGate = gates.masked_select(decision.Kept) // with gradient
    let struct (sortedExp, order) = torch.sort(pairExp, 0L, false, true)
    use sortedExp = sortedExp
    use order = order
    use counts = torch.bincount(sortedExp, null, e)
    let countArr = counts.cpu().data<int64>().ToArray()
    use tokSorted = pairTok.index_select(0L, order)
    use gateSorted = pairGate.index_select(0L, order)
    use xs = x.index_select(0L, tokSorted) // (P, D)
    use ys = Experts.forwardSorted ctx m.ExpertDropout p.Experts xs countArr // (P, D)
    use g = gateSorted.unsqueeze(1L)
    use yw = ys * g
    use zeros = torch.zeros_like(x)
    use out = zeros.index_add(0L, tokSorted, yw, Scalars.one) // (S, D)
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
                  Load = counts.clone ()
                  Capacity = decision.Capacity
                  Balance = balance.item<float32> () |> float }
    let y = scope.MoveToOuter(out.view(b, n, d))
    let aux = scope.MoveToOuter aux
    let record =
        record
        |> Option.map (fun r ->
            { r with
                Index = scope.MoveToOuter r.Index
                Gate = scope.MoveToOuter r.Gate
                Kept = scope.MoveToOuter r.Kept
                Probs = scope.MoveToOuter r.Probs
                Load = scope.MoveToOuter r.Load })
    { Y = y; Aux = aux; Record = record }

/// z (B, N, D) -> y, aux, drawing random numbers from the context.
let forward (c: VitConfig) (ctx: Ctx) (p: Params) (wantRecord: bool) (z: Tensor) : Output =
    forwardWith c ctx p Router.noDraws wantRecord z
