/// A sparse block's Mixture-of-Experts layer in eval mode as ONNX operators (docs/moe.md §1-6): router logits and
/// softmax, TopK choices and renormalised gates, the second-expert policy, slots from exclusive CumSums over one-hot
/// (groups, tokens, E) masks (visited in TopK order of the top probability when batch-prioritised), capacity from the
/// shapes, then dispatch of the kept (token, choice) pairs only: their keys (the row e*(G*C) + g*C + slot of a capacity
/// buffer, never materialised) sorted by TopK group them by expert, each expert runs its own MatMuls on its slice (no
/// work on empty slots or dropped choices, as TorchSharp's sorted dispatch), and each token gathers its rows back
/// (dropped choices read a zero row) and sums them weighted by its gates.
module SfMoe.Core.Onnx.MoeGraph

open TorchSharp
open SfMoe.Core
open SfMoe.Core.Config
open SfMoe.Core.Onnx.Proto
open SfMoe.Core.Onnx.Graph
open SfMoe.Core.Onnx.Layers

/// Graph values that report routing: (B, N, k) int64 chosen experts and (B, N, k) bool kept choices.
type Routing = { Index: string; Kept: string }

/// Router logits (S, D) -> (S, E). The cosine router's normalised expert embeddings and its scale are computed here
/// with the same TorchSharp functions as the forward pass.
let private logits (g: Graph) (key: string) (gate: Router.Gate) (x: string) : string =
    match gate with
    | Router.Linear lg -> g.MatMul(x, param g (key + ".w_gating") lg.WGating, "logits")
    | Router.Cosine cg ->
        let p = linear g (key + ".cosine_projector") cg.Projector x // (S, P)
        let norm = g.Reduce("ReduceL2", p, [ 1L ], true)
        let pn = g.Div(p, g.Max(norm, g.Float 1e-12f))
        use sn = torch.nn.functional.normalize(cg.SimMatrix, 2.0, 0L, 1e-12) // (P, E)
        use clamped = cg.Temperature.clamp_max(Tensors.Scalars.constant (log 100.0))
        use scale = clamped.exp ()
        let cos = g.MatMul(pn, param g (key + ".sim_matrix_normalized") sn)
        g.Mul(cos, param g (key + ".scale") scale, "logits")

/// Capacity per group of `n` tokens (Router.capacity), computed by the graph when n is only known at run time.
let private capacity (g: Graph) (m: MoeConfig) (n: Size) : Size =
    let e = int64 m.NumExperts
    match m.CapacityEval, n with
    | Dropless, _ -> n
    | Factor _, Fixed v -> Fixed(Router.capacity m false v)
    | Factor cf, Runtime nt ->
        g.Within("capacity", fun () ->
            match m.Scope with
            | PerBatch ->
                // k * int(cf * ceil(n / E))
                let ceil = g.Div(g.Add(nt, g.Int(e - 1L)), g.Int e)
                let scaled = g.Mul(g.Cast(ceil, DataType.float64), g.Double cf)
                let whole = g.Cast(g.Node("Floor", [ scaled ]), DataType.int64)
                Runtime(g.Mul(whole, g.Int(int64 m.TopK), "capacity"))
            | PerImage minCapacity ->
                // max(minCapacity, min(n, floor(n * cf / E)))
                let share = g.Div(g.Mul(g.Cast(nt, DataType.float64), g.Double cf), g.Double(float e))
                let whole = g.Cast(g.Node("Floor", [ share ]), DataType.int64)
                let upper = g.Node("Min", [ nt; whole ])
                Runtime(g.Max(upper, g.Int(int64 minCapacity), "capacity")))

/// The layer on tokens z (B*N, D) -> (B*N, D) for a batch of `batch` images of N tokens; `policy` replaces the configured
/// second-expert policy (deterministic serving of the random one). `key` is the state-dict prefix (blocks.i.mlp).
let forward (g: Graph) (c: VitConfig) (policy: SecondPolicy) (p: Moe.Params) (key: string) (batch: Size) (wantRouting: bool) (z: string) : string * Routing option =
    let m = c.Moe
    let n = int64 (VitConfig.numTokens c)
    let d = int64 c.EmbedDim
    let e = int64 m.NumExperts
    let k = int64 m.TopK
    let s = g.MulSize(batch, Fixed n)
    let zf = z // (S, D)
    let probs = g.Softmax(logits g (key + ".gate") p.Gate zf, -1, "probs") // (S, E)
    let values, index = g.TopK(probs, g.Ints [ k ], "choices") // (S, k)
    let gates =
        if k = 1L then values
        else g.Div(values, g.Add(g.ReduceSum(values, [ 1L ], true), g.Float 1e-9f), "gates")
    let choice j = g.Slice(index, 1L, j, j + 1L, sprintf "choice%d" (j + 1L)) // (S, 1)
    let gate j = g.Slice(gates, 1L, j, j + 1L, sprintf "gate%d" (j + 1L)) // (S, 1)
    // Groups: an image each, or the whole batch.
    let groups, groupLen, groupDims =
        match m.Scope with
        | PerImage _ -> batch, Fixed n, [ -1L; n ]
        | PerBatch -> Fixed 1L, s, [ 1L; -1L ]
    let grouped (x: string) = g.ReshapeTo(x, groupDims, "grouped") // (S[, 1]) -> (G, n)
    let cap = capacity g m groupLen
    let dropless = m.CapacityEval = Dropless
    let experts = g.Ints [ 0L .. e - 1L ]
    let oneHot j = // (G, n, E) int64
        let hot = g.Cast(g.Equal(choice j, experts), DataType.int64, sprintf "onehot%d" (j + 1L))
        g.ReshapeTo(hot, groupDims @ [ e ], sprintf "onehot%d" (j + 1L))
    // Second-choice dispatch mask (S, 1) bool: None dispatches every second choice.
    let secondUsed = k = 2L && policy <> SecondNone
    let m2 =
        if not secondUsed then None
        else
            match policy with
            | SecondThreshold t -> Some(g.Greater(gate 1L, g.Float(float32 t), "second_dispatched"))
            | SecondRandom t ->
                let u = g.Node("RandomUniformLike", [ gate 1L ], [ "dtype", AInt(int64 DataType.float32) ], "uniform")
                Some(g.Less(u, g.Div(gate 1L, g.Float(float32 (max t 1e-9))), "second_dispatched"))
            | SecondAll | SecondNone -> None
    // Visiting order within each group (batch priority): descending top probability, ties in token order.
    let order =
        if not m.BatchPrioritized then None
        else
            let top = g.Reduce("ReduceMax", probs, [ 1L ], false, "top_prob") // (S,)
            let _, ord = g.TopK(grouped top, g.SizeTensor groupLen, "priority") // (G, n)
            Some ord
    // Exclusive count of each expert's mask entries before every token, in visiting order: (G, n, E).
    let before (mask: string) =
        match order with
        | None -> g.CumSum(mask, 1L, true, "before")
        | Some ord ->
            let shape = g.Shape(mask, 0, 3)
            let idx = g.Expand(g.Unsqueeze(ord, [ 2L ]), shape, "priority_index")
            let visited = g.GatherElements(mask, idx, 1, "visited")
            let counts = g.CumSum(visited, 1L, true, "before")
            g.ScatterElements(g.FillInt(shape, 0L), idx, counts, 1, "before")
    let slotOf (pos: string) (mask: string) = g.ReduceSum(g.Mul(pos, mask), [ 2L ], false, "slot") // (G, n)
    let capT = g.SizeTensor cap
    let mask1 = oneHot 0L
    let slot1 = slotOf (before mask1) mask1
    let kept1 = if dropless then None else Some(g.Less(slot1, capT, "kept1"))
    let second =
        if not secondUsed then None
        else
            let hot2 = oneHot 1L
            let mask2 =
                match m2 with
                | Some m2 -> g.Mul(hot2, g.Cast(g.ReshapeTo(m2, groupDims @ [ 1L ]), DataType.int64), "mask2")
                | None -> hot2
            let firstCount = // (G, 1, E)
                match m.Scope, kept1 with
                | PerImage _, Some k1 -> g.ReduceSum(g.Mul(mask1, g.Cast(g.Unsqueeze(k1, [ 2L ]), DataType.int64)), [ 1L ], true, "first_count")
                | _ -> g.ReduceSum(mask1, [ 1L ], true, "first_count")
            let slot2 = slotOf (g.Add(before mask2, firstCount)) mask2
            let under = if dropless then None else Some(g.Less(slot2, capT))
            let kept2 =
                match under, m2 with
                | Some u, Some m2 -> Some(g.And(u, grouped m2, "kept2"))
                | Some u, None -> Some u
                | None, Some m2 -> Some(grouped m2)
                | None, None -> None
            Some(slot2, kept2)
    // Buffer rows: e*(G*C) + g*C + slot.
    let gc = g.MulSize(groups, cap)
    let rows = g.MulSize(Fixed e, gc)
    let rowsT = g.SizeTensor rows
    let groupOffset = // (G, 1)
        match groups with
        | Fixed 1L -> None
        | _ -> Some(g.Mul(g.Unsqueeze(g.Arange groups, [ 1L ]), capT, "group_offset"))
    let rowOf j (slot: string) =
        let expertRow = g.Mul(g.ReshapeTo(choice j, groupDims), g.SizeTensor gc, "expert_offset")
        let withGroup = match groupOffset with Some o -> g.Add(expertRow, o) | None -> expertRow
        g.Add(withGroup, slot, sprintf "row%d" (j + 1L)) // (G, n)
    let choices =
        [ yield 0L, rowOf 0L slot1, kept1
          match second with
          | Some(s2, k2) -> yield 1L, rowOf 1L s2, k2
          | None -> () ]
    let dispatchedChoices = int64 choices.Length
    let tokens = grouped (g.Arange s) // (G, n)
    let pairs = g.MulSize(s, Fixed dispatchedChoices) // P = S * choices, pair p = j*S + token
    let flat (x: string) = g.ReshapeTo(x, [ -1L ])
    // Only the kept (token, choice) pairs run through the experts, as TorchSharp's sorted dispatch does: each pair's key
    // is its buffer row e*(G*C) + g*C + slot when kept, and a distinct row past the end when not; sorting the keys puts
    // the kept pairs first, grouped by expert (in slot order), and each expert runs on its own slice of that order.
    let order, ends =
        g.Within("dispatch", fun () ->
            let keys =
                [ for j, row, kept in choices ->
                      match kept with
                      | None -> flat row
                      | Some kept ->
                          let spare = g.Add(g.Add(g.Mul(tokens, g.Int dispatchedChoices), g.Int j), rowsT, "spare_row")
                          flat (g.Where(kept, row, spare)) ]
            let negated = g.Node("Neg", [ g.Concat(keys, 0, "keys") ]) // (P,): the largest first is the smallest key first
            let sortedNeg, order = g.TopK(negated, g.SizeTensor pairs, "sorted_pairs")
            // Kept pairs of experts 0..e: keys below (e+1)*G*C. ends (E,): where each expert's slice ends.
            let bounds = g.Neg(g.Mul(g.Ints [ 1L .. e ], g.SizeTensor gc), "expert_bounds") // (E,) negated
            let below = g.Cast(g.Greater(g.Unsqueeze(sortedNeg, [ 1L ]), bounds), DataType.int64) // (P, E)
            order, g.ReduceSum(below, [ 0L ], false, "expert_ends"))
    let zeroRow = g.Init(key + ".zero_row", TensorValue.float32s [| 1L; d |] (Array.zeroCreate (int d)))
    let bank = p.Experts
    let ys =
        g.Within("experts", fun () ->
            let pairTokens = g.Concat([ for _ in choices -> flat tokens ], 0, "pair_tokens") // (P,)
            let sortedTokens = g.Gather(pairTokens, order, 0, "sorted_tokens") // (P,), kept pairs first
            let outs =
                [ for ei in 0L .. e - 1L ->
                      let stop = g.Slice(ends, 0L, ei, ei + 1L, sprintf "end%d" ei)
                      let start = if ei = 0L then g.Ints [ 0L ] else g.Slice(ends, 0L, ei - 1L, ei, sprintf "start%d" ei)
                      let rowsOf = g.Node("Slice", [ sortedTokens; start; stop; g.Ints [ 0L ] ], hint = sprintf "expert%d_tokens" ei)
                      let x = g.Gather(zf, rowsOf, 0, sprintf "expert%d_inputs" ei) // (n_e, D)
                      let weight (name: string) (w: torch.Tensor) = param g (sprintf "%s.experts.%s.%d" key name ei) w
                      let bias (name: string) (b: torch.Tensor option) (y: string) =
                          match b with
                          | Some b -> g.Add(y, weight name b[ei])
                          | None -> y
                      let h = bias "b1" bank.B1 (g.MatMul(x, weight "w1" bank.W1[ei])) // (n_e, H)
                      bias "b2" bank.B2 (g.MatMul(g.Gelu h, weight "w2" bank.W2[ei])) ] // (n_e, D)
            g.Concat(outs @ [ zeroRow ], 0, "expert_outputs")) // (kept pairs + 1, D); the last row is zero
    // Combine: each pair's place in the sorted order is its row of the expert outputs (dropped pairs read the zero row,
    // index -1); each token weights its rows by its gates.
    let place =
        let positions = g.Arange pairs
        let inverse = g.ScatterElements(g.FillInt(g.ShapeOf [ pairs ], 0L), order, positions, 0, "pair_place") // (P,)
        g.ReshapeTo(inverse, [ dispatchedChoices; -1L ], "pair_place") // (choices, S)
    let weighted =
        [ for j, _, kept in choices ->
              let at = g.Gather(place, g.Int j, 0, sprintf "place%d" (j + 1L)) // (S,)
              let dest = match kept with Some kept -> g.Where(flat kept, at, g.Int -1L) | None -> at
              let y = g.Gather(ys, dest, 0) // (S, D)
              g.Mul(y, gate j, sprintf "weighted%d" (j + 1L)) ]
    let y = List.reduce (fun a b -> g.Add(a, b, "combined")) weighted
    let out = y // (S, D)
    let routing =
        if not wantRouting then None
        else
            let flat (x: string) = g.ReshapeTo(x, [ -1L; 1L ])
            let always (slot: string) = g.Equal(slot, slot)
            let keptCols =
                [ yield flat (defaultArg kept1 (always slot1))
                  if k = 2L then
                      match second with
                      | Some(s2, k2) -> yield flat (defaultArg k2 (always s2))
                      | None -> yield flat (g.Node("Not", [ always slot1 ])) ]
            Some
                { Index = g.ReshapeTo(index, [ -1L; n; k ], "routing_index")
                  Kept = g.ReshapeTo(g.Concat(keptCols, 1), [ -1L; n; k ], "routing_kept") }
    out, routing
