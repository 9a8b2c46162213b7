/// Precision (fp32 | tf32 | bf16 mixed precision), deterministic kernels and the multi-tensor optimizer, on the CPU
/// (libtorch's CPU kernels run bfloat16).
module SfMoe.Core.Tests.PrecisionTests

open System
open Expecto
open TorchSharp
open TorchSharp.Modules
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Tests.Support

let private config (name: string) (classes: int) =
    { (Registry.tryCreate name |> Result.defaultWith failwith) with NumClasses = classes }

/// Logits and first-choice experts of every sparse block, in eval mode, at a precision.
let private evalAt (m: Vit.SfMoeVit) (precision: Precision) (deterministic: bool) (x: Tensor) =
    use _ = torch.no_grad ()
    m.eval () |> ignore
    use g = generator 0L Dd.cpu
    let ctx = { Ctx.withRng g Ctx.eval with Precision = precision; Deterministic = deterministic }
    use o = m.RunWith(ctx, x, false, true)
    o.Logits.clone (), [ for _, r in o.Routing -> r.Index.select(2L, 0L).clone () ]

/// A learnable problem: the class is which quadrant of the image is bright (as TrainTests).
let private quadrants (n: int64) (seed: int64) =
    use g = generator seed Dd.cpu
    let y = torch.randint(4L, [| n |], generator = g)
    let x = torch.randn([| n; 3L; 32L; 32L |], generator = g).mul_(Scalars.constant 0.3)
    for i in 0L .. n - 1L do
        let q = y[i].item<int64> ()
        let r, c = (q / 2L) * 16L, (q % 2L) * 16L
        x[i].narrow(1L, r, 16L).narrow(2L, c, 16L).add_(Scalars.constant 1.0, Scalars.one) |> ignore
    x, y

/// The per-parameter Adam the optimizer replaced (PyTorch's single-tensor arithmetic), as the reference.
let private referenceAdam (kind: Optim.Kind) (lr: float) (wd: float) (ps: Parameter list) =
    let m = ps |> List.map (fun p -> torch.zeros_like p)
    let v = ps |> List.map (fun p -> torch.zeros_like p)
    let mutable step = 0
    fun () ->
        use _ = torch.no_grad ()
        step <- step + 1
        let bc1 = 1.0 - 0.9 ** float step
        let bc2 = 1.0 - 0.999 ** float step
        for (p: Parameter), (mt: Tensor), (vt: Tensor) in List.zip3 ps m v do
            if not (isNull p.grad) then
                use g = if kind = Optim.AdamL2 && wd <> 0.0 then p.grad.add(p, wd.ToScalar()) else p.grad.alias ()
                if kind = Optim.AdamW && wd <> 0.0 then p.mul_((1.0 - lr * wd).ToScalar()) |> ignore
                mt.mul_((0.9).ToScalar()).add_(g, (1.0 - 0.9).ToScalar()) |> ignore
                vt.mul_((0.999).ToScalar()).addcmul_(g, g, (1.0 - 0.999).ToScalar()) |> ignore
                use sq = vt.sqrt ()
                use denom = sq.div_((sqrt bc2).ToScalar()).add_((1e-8).ToScalar(), Scalars.one)
                p.addcdiv_(mt, denom, (-lr / bc1).ToScalar()) |> ignore

[<Tests>]
let tests =
    testList "precision" [
        test "bf16 forward is within bf16 tolerance of fp32 and routes >= 95% of tokens to the same first expert" {
            for name in [ "sfmoe_test_patch8_32"; "gmoe_test_patch8_32" ] do
                use m = new Vit.SfMoeVit(config name 5, Dd.cpu, Some 2L)
                use x = torch.randn([| 16L; 3L; 32L; 32L |], generator = generator 1L Dd.cpu)
                let l32, r32 = evalAt m Fp32 false x
                let l16, r16 = evalAt m Bf16 false x
                Expect.equal l16.dtype torch.ScalarType.Float32 "bf16 runs return float32 logits"
                Expect.isFalse (tensorsEqual l16 l32) (name + ": bf16 really computes in bfloat16")
                let e = relErr l16 l32
                Expect.isLessThan e 0.05 (sprintf "%s: logits within bf16 tolerance (relative error %g)" name e)
                printfn "bf16 vs fp32, %s: logits relative error %.4f" name e
                for a, b in List.zip r16 r32 do
                    use same = a.eq(b).to_type(torch.ScalarType.Float64).mean()
                    let agree = same.item<float> ()
                    Expect.isGreaterThanOrEqual agree 0.95 (sprintf "%s: first choices agree on %.1f%% of tokens" name (100.0 * agree))
                    printfn "bf16 vs fp32, %s: first choices agree on %.1f%% of tokens" name (100.0 * agree)
        }

        test "tf32 changes nothing on the CPU, and says so" {
            use m = new Vit.SfMoeVit(config "sfmoe_test_patch8_32" 5, Dd.cpu, Some 2L)
            use x = torch.randn([| 4L; 3L; 32L; 32L |], generator = generator 1L Dd.cpu)
            let a, _ = evalAt m Fp32 false x
            let b, _ = evalAt m Tf32 false x
            Expect.isTrue (tensorsEqual a b) "tf32 = fp32 on the CPU"
            let note = Precision.configure torch.CPU Tf32
            Expect.stringContains note "changes nothing" note
        }

        test "deterministic kernels (math attention, patch matmul) compute the same model" {
            use m = new Vit.SfMoeVit({ config "sfmoe_test_patch8_32" 5 with Distilled = true }, Dd.cpu, Some 2L)
            use x = torch.randn([| 4L; 3L; 32L; 32L |], generator = generator 1L Dd.cpu)
            let a, ra = evalAt m Fp32 false x
            let b, rb = evalAt m Fp32 true x
            expectClose 1e-5 "logits" b a
            for i, j in List.zip ra rb do Expect.isTrue (tensorsEqual i j) "same routing"
        }

        test "300 steps of the tiny SF-MoE in bf16 track the fp32 loss curve" {
            let x, y = quadrants 64L 3L
            use x = x
            use y = y
            let curve (precision: Precision) =
                use m = new Vit.SfMoeVit(config "sfmoe_test_patch8_32" 4, Dd.cpu, Some 1L)
                use learner = new Train.Learner(Networks.VitNet m, Train.SfMoeAlg, Optim.AdamL2, 1e-3, 0.0, 1L, Dd.cpu, precision, false)
                [| for _ in 1..300 -> learner.Update([ x ], [ y ]).Ce |]
            let f32 = curve Fp32
            let b16 = curve Bf16
            let window (c: float[]) i = Array.average c[i * 50 .. i * 50 + 49]
            printfn "mean CE per 50 steps, fp32: %s; bf16: %s" (String.Join(" ", [ for i in 0..5 -> sprintf "%.4f" (window f32 i) ])) (String.Join(" ", [ for i in 0..5 -> sprintf "%.4f" (window b16 i) ]))
            for i in 0..5 do
                let a, b = window f32 i, window b16 i
                Expect.isLessThan (abs (a - b)) (0.02 + 0.1 * a) (sprintf "steps %d-%d: mean CE fp32 %.4f, bf16 %.4f" (i * 50) (i * 50 + 49) a b)
            Expect.isLessThan (window b16 5) (window b16 0 * 0.5) (sprintf "bf16 learns: %.3f -> %.3f" (window b16 0) (window b16 5))
            Expect.isTrue (Array.forall Double.IsFinite b16) "finite"
        }

        test "multi-tensor Adam equals the per-parameter update within fp32 rounding, in one buffer" {
            for kind in [ Optim.AdamL2; Optim.AdamW ] do
                let shapes = [ [| 7L; 3L |]; [| 5L |]; [| 2L; 3L; 4L |]; [| 1L |]; [| 33L |]; [| 4L |] ]
                let make () =
                    use g = generator 3L Dd.cpu
                    [ for s in shapes -> new Parameter(torch.randn(s, generator = g), true) ]
                let ours = make ()
                let refs = make ()
                use opt = new Optim.Adam([ for i, p in List.indexed ours -> sprintf "p%d" i, p ], kind, 0.01, 0.05)
                Expect.equal opt.Groups 1 "one flat buffer: O(1) kernels per step"
                let step = referenceAdam kind 0.01 0.05 refs
                use gg = generator 4L Dd.cpu
                for t in 1..6 do
                    opt.ZeroGrad()
                    for i, s in List.indexed shapes do
                        // the last parameter never gets a gradient: neither optimizer may touch it
                        if i < shapes.Length - 1 then
                            use g = torch.randn(s, generator = gg)
                            // the same gradient through autograd (ours, accumulating into the flat view) and set directly
                            use l = (ours[i] * g).sum()
                            l.backward ()
                            refs[i].grad <- g.clone ()
                    opt.Update()
                    step ()
                let mutable bitwise = true
                let mutable worst = 0.0
                for i, (a, b) in List.indexed (List.zip ours refs) do
                    expectClose 1e-6 (sprintf "%A p%d" kind i) a b
                    bitwise <- bitwise && tensorsEqual a b
                    worst <- max worst (relErr a b)
                use last = refs[shapes.Length - 1].detach().clone ()
                Expect.isTrue (tensorsEqual ours[shapes.Length - 1] last) "a parameter without gradient is left alone"
                printfn "multi-tensor Adam (%A) vs per-parameter: %s (largest relative difference %g after 6 steps)" kind (if bitwise then "bitwise equal" else "not bitwise") worst
        }

        test "the optimizer's state round-trips and its parameters stay views of one buffer" {
            use m = new Vit.SfMoeVit(config "sfmoe_test_patch8_32" 4, Dd.cpu, Some 1L)
            use learner = new Train.Learner(Networks.VitNet m, Train.SfMoeAlg, Optim.AdamW, 1e-3, 0.05, 1L, Dd.cpu)
            Expect.equal learner.Optimizer.Groups 1 "one buffer for the whole model"
            let x, y = quadrants 8L 5L
            use x = x
            use y = y
            for _ in 1..2 do learner.Update([ x ], [ y ]) |> ignore
            let state, step = learner.Optimizer.State
            Expect.equal step 2L "step count"
            Expect.equal state.Length (2 * Seq.length (m.parameters ())) "two moments per parameter"
            use m2 = new Vit.SfMoeVit(config "sfmoe_test_patch8_32" 4, Dd.cpu, Some 1L)
            use l2 = new Train.Learner(Networks.VitNet m2, Train.SfMoeAlg, Optim.AdamW, 1e-3, 0.05, 1L, Dd.cpu)
            Weights.load true m2 [ for KeyValue(k, v) in m.state_dict () -> k, v ] |> ignore
            l2.Optimizer.LoadState(state |> List.map (fun (k, t) -> k, t.clone ()), step)
            l2.Generator.set_state(learner.Generator.get_state ()) |> ignore
            let a = learner.Update([ x ], [ y ])
            let b = l2.Update([ x ], [ y ])
            Expect.equal b.Loss a.Loss "a restored optimizer continues identically"
            for struct (n, p) in m.named_parameters () do
                Expect.isTrue (tensorsEqual p (m2.get_parameter n)) n
        }
    ]
