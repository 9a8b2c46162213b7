/// A bank of E two-layer FFN experts held as batched weights: w1 (E, D, H), w2 (E, H, D), optional biases b1 (E, H)
/// and b2 (E, D) (lucidrains layout and names; tutel's transposed layout is mapped on load). Experts run either on
/// contiguous slices of token rows sorted by expert (no padding; the slice sizes are read on the host) or on
/// fixed-size slot buffers (E, R, D) with batched matmuls (no host read).
module SfMoe.Core.Experts

open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Layers

/// The expert weights (a leaf module; parameters are read by name at every use).
type ExpertBank(numExperts: int, dim: int, hidden: int, bias: bool, dd: Dd, g: torch.Generator option) as this =
    inherit Module("experts")

    let e, d, h = int64 numExperts, int64 dim, int64 hidden

    do
        // SF-MoE (lucidrains init_): U(-1/sqrt(last dim), +1/sqrt(last dim)) for both weights.
        let w1 = parameter dd [| e; d; h |]
        Init.uniform (-1.0 / sqrt (float hidden)) (1.0 / sqrt (float hidden)) g w1
        let w2 = parameter dd [| e; h; d |]
        Init.uniform (-1.0 / sqrt (float dim)) (1.0 / sqrt (float dim)) g w2
        this.register_parameter("w1", w1)
        this.register_parameter("w2", w2)
        if bias then
            // nn.Linear's default bias init (tutel builds its experts from nn.Linear).
            let b1 = parameter dd [| e; h |]
            Init.uniform (-1.0 / sqrt (float dim)) (1.0 / sqrt (float dim)) g b1
            let b2 = parameter dd [| e; d |]
            Init.uniform (-1.0 / sqrt (float hidden)) (1.0 / sqrt (float hidden)) g b2
            this.register_parameter("b1", b1)
            this.register_parameter("b2", b2)

    member _.NumExperts = numExperts
    member _.Dim = dim
    member _.Hidden = hidden
    member _.HasBias = bias
    member this.W1: Tensor = this.get_parameter "w1"
    member this.W2: Tensor = this.get_parameter "w2"
    member this.B1: Tensor option = if bias then Some(this.get_parameter "b1" :> Tensor) else None
    member this.B2: Tensor option = if bias then Some(this.get_parameter "b2" :> Tensor) else None

let init (c: VitConfig) (dd: Dd) (g: torch.Generator option) : ExpertBank =
    new ExpertBank(c.Moe.NumExperts, c.EmbedDim, VitConfig.hidden c, c.Moe.ExpertBias, dd, g)

/// The bank's weights in the dtype matmuls run in (bfloat16 copies under Bf16, the parameters themselves otherwise).
type private Weights =
    { W1: Tensor; W2: Tensor; B1: Tensor option; B2: Tensor option }
    interface System.IDisposable with
        member w.Dispose() =
            for t in [ yield w.W1; yield w.W2; yield! Option.toList w.B1; yield! Option.toList w.B2 ] do t.Dispose()

let private weights (ctx: Ctx) (bank: ExpertBank) : Weights =
    let t = Precision.computeType ctx.Precision bank.W1.dtype
    let c (x: Tensor) = if x.dtype = t then x.alias () else x.to_type(t)
    { W1 = c bank.W1; W2 = c bank.W2; B1 = bank.B1 |> Option.map c; B2 = bank.B2 |> Option.map c }

/// One expert on a slice of rows: (n, D) -> (n, D).
let private runOne (ctx: Ctx) (dropoutP: float) (w: Weights) (e: int64) (x: Tensor) : Tensor =
    use w1 = w.W1.select(0L, e) // (D, H)
    use w2 = w.W2.select(0L, e) // (H, D)
    use h =
        match w.B1 with
        | Some b1 ->
            use b = b1.select(0L, e)
            torch.addmm(b, x, w1, 1.0f, 1.0f)
        | None -> torch.matmul(x, w1) // (n, H)
    use a = torch.nn.functional.gelu h
    use ad = dropout ctx dropoutP a
    match w.B2 with
    | Some b2 ->
        use b = b2.select(0L, e)
        torch.addmm(b, ad, w2, 1.0f, 1.0f)
    | None -> torch.matmul(ad, w2) // (n, D)

/// Run the experts on rows sorted by expert: x (P, D) where the first counts[0] rows go to expert 0, the next
/// counts[1] to expert 1, ...; returns (P, D) in the same order, in the context's precision (x is already cast).
let forwardSorted (ctx: Ctx) (dropoutP: float) (bank: ExpertBank) (x: Tensor) (counts: int64[]) : Tensor =
    let dropoutP = if ctx.Training then dropoutP else 0.0
    use w = weights ctx bank
    let outs =
        [| let mutable off = 0L
           for e in 0 .. counts.Length - 1 do
               let n = counts[e]
               if n > 0L then
                   use slice = x.narrow(0L, off, n)
                   yield runOne ctx dropoutP w (int64 e) slice
               off <- off + n |]
    match outs with
    | [||] -> torch.zeros_like x
    | [| one |] -> one
    | many ->
        let y = torch.cat(many, 0L)
        for t in many do t.Dispose()
        y

/// Run every expert on its fixed-size slot buffer with batched matmuls: x (E, R, D) -> (E, R, D), in the context's
/// precision (x is already cast). Fixed shapes: nothing is read back (capacity-limited routing on accelerators).
let forwardPadded (ctx: Ctx) (dropoutP: float) (bank: ExpertBank) (x: Tensor) : Tensor =
    let dropoutP = if ctx.Training then dropoutP else 0.0
    use w = weights ctx bank
    use h0 = torch.bmm(x, w.W1) // (E, R, H)
    use h =
        match w.B1 with
        | Some b1 ->
            use b = b1.unsqueeze(1L) // (E, 1, H)
            add h0 b
        | None -> h0.alias ()
    use a = torch.nn.functional.gelu h
    use ad = dropout ctx dropoutP a
    use y = torch.bmm(ad, w.W2) // (E, R, D)
    match w.B2 with
    | Some b2 ->
        use b = b2.unsqueeze(1L) // (E, 1, D)
        add y b
    | None -> y.alias ()

/// Every expert applied to every row: x (n, D) -> (E, n, D). For tests and analysis, not for the forward pass.
let applyAll (bank: ExpertBank) (x: Tensor) : Tensor =
    use w = weights Ctx.eval bank
    let ys = [| for e in 0L .. int64 bank.NumExperts - 1L -> runOne Ctx.eval 0.0 w e x |]
    let y = torch.stack(ys, 0L)
    for t in ys do t.Dispose()
    y

/// Dense-to-MoE upcycling (GMoE): copy a dense FFN (fc1: Linear(D, H), fc2: Linear(H, D)) into every expert.
/// Biases are copied when the bank has them (SF-MoE's .npz path, which has none, drops them).
let copyDense (bank: ExpertBank) (fc1: Linear) (fc2: Linear) : unit =
    use _ = torch.no_grad ()
    use w1 = fc1.weight.t () // (D, H)
    use w2 = fc2.weight.t () // (H, D)
    bank.W1.copy_(w1) |> ignore // broadcast over E
    bank.W2.copy_(w2) |> ignore
    match bank.B1, bank.B2 with
    | Some b1, Some b2 ->
        b1.copy_(fc1.bias) |> ignore
        b2.copy_(fc2.bias) |> ignore
    | _ -> ()
