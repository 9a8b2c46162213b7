/// Device correctness without a GPU: full training steps and eval forwards on libtorch's `meta` device (shapes only:
/// any host read throws, so a step that completes there reads nothing back), the counter-based random stream that
/// accelerators use, the padded (sync-free) MoE dispatch against the sorted one, and weights drawn on the CPU.
module SfMoe.Core.Tests.DeviceTests

open System
open Expecto
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Tests.Support

let private meta = { Dd.cpu with Device = torch.META }

let private config (name: string) (classes: int) =
    { (Registry.tryCreate name |> Result.defaultWith failwith) with NumClasses = classes }

/// True when reading `t` on the host throws (it lives on `meta`).
let private unreadable (t: Tensor) =
    try
        t.cpu () |> ignore
        false
    with _ -> true

/// Training steps (forward, backward, optimizer, routing statistics) and eval forwards of a model on `meta`.
let private metaSteps (name: string) (alg: Train.AlgorithmKind) (opt: Optim.Kind) (precision: Precision) (batch: int64) =
    test (sprintf "%s: %A steps (%A, %A) and eval forwards on meta read nothing from the device" name alg opt precision) {
        let c = config name 5
        use m = new Vit.SfMoeVit(c, meta, Some 0L)
        let net = Networks.VitNet m
        for struct (n, p) in m.named_parameters () do
            Expect.equal p.device_type DeviceType.META (sprintf "%s on meta" n)
        use learner = new Train.Learner(net, alg, opt, 1e-4, 0.05, 7L, meta, precision, false)
        let img = int64 c.ImgSize
        use x = torch.empty([| batch; int64 c.InChans; img; img |], device = torch.META)
        use y = torch.empty([| batch |], dtype = torch.ScalarType.Int64, device = torch.META)
        for _ in 1..2 do
            use metrics = learner.Step([ x; x ], [ y; y ])
            Expect.equal metrics.device_type DeviceType.META "metrics stay on the device"
            Expect.sequenceEqual metrics.shape [| 3L |] "loss, ce, aux"
            Expect.isTrue (unreadable metrics) "meta tensors cannot be read (the premise of this test)"
        Expect.equal learner.Optimizer.Step 2L "two optimizer steps"
        use logits = learner.Predict(x)
        Expect.sequenceEqual logits.shape [| batch; 5L |] "eval logits"
        use g = generator 3L Dd.cpu
        use logits2 = learner.Predict(x, g)
        Expect.equal logits2.device_type DeviceType.META "eval with a (CPU) generator: draws copied to the device"
        // Reading the statistics is the one place that touches the device, at evaluation: on meta it throws.
        Expect.throws (fun () -> learner.TakeRoutingStats() |> ignore) "routing statistics live on the device"
    }

/// Mean and variance of a tensor as floats.
let private moments (t: Tensor) =
    use d = t.to_type(torch.ScalarType.Float64)
    use m = d.mean()
    use v = d.var()
    m.item<float> (), v.item<float> ()

[<Tests>]
let tests =
    testList "device" [
        testList "meta" [
            metaSteps "sfmoe_small_patch16_224" Train.SfMoeAlg Optim.AdamL2 Fp32 2L
            metaSteps "gmoe_small_patch16_224" Train.GMoeAlg Optim.AdamW Fp32 2L
            metaSteps "sfmoe_test_patch8_32" Train.SfMoeAlg Optim.AdamW Bf16 4L
            metaSteps "gmoe_test_patch8_32" Train.GMoeAlg Optim.AdamL2 Bf16 4L
            test "the CNN baselines build from CPU draws and move to meta" {
                for arch in [ "resnet50"; "mnist_cnn" ] do
                    let a = ModelSpec.resolve (ModelSpec.named arch)
                    let net = Networks.build a meta 0L 0.0
                    for struct (n, p) in net.Module.named_parameters () do
                        Expect.equal p.device_type DeviceType.META (sprintf "%s: %s on meta" arch n)
                    net.Module.Dispose()
            }
        ]

        testList "hashed stream" [
            test "the device mixer equals its scalar reference" {
                use x = torch.tensor([| 0L; 1L; 2L; 12345L; 4294967295L; 2147483648L; 99999999L |])
                let expected = x.data<int64>().ToArray() |> Array.map HashStream.mix32Value
                HashStream.mix32 x
                Expect.sequenceEqual (x.data<int64>().ToArray()) expected "mix32 on tensors = mix32Value"
                for v in expected do Expect.isTrue (v >= 0L && v < 4294967296L) "32-bit words"
            }

            test "uniform and normal draws have the right moments and no visible correlation" {
                let s = HashStream(SplitMix.key 1L 0L)
                use u = HashStream.uniform s [| 200000L |] torch.CPU
                let m, v = moments u
                Expect.floatClose { absolute = 0.005; relative = 0.0 } m 0.5 "uniform mean"
                Expect.floatClose { absolute = 0.002; relative = 0.0 } v (1.0 / 12.0) "uniform variance"
                use lo = u.min()
                use hi = u.max()
                Expect.isTrue (lo.item<float32> () >= 0.0f && hi.item<float32> () < 1.0f) "in [0, 1)"
                // 20 equal buckets: chi-square with 19 degrees of freedom stays well below 60
                use idx = u.mul(Scalars.constant 20.0).floor().to_type(torch.ScalarType.Int64)
                use counts = torch.bincount(idx, null, 20L)
                let expectedCount = 200000.0 / 20.0
                let chi2 = counts.data<int64>().ToArray() |> Array.sumBy (fun c -> (float c - expectedCount) ** 2.0 / expectedCount)
                Expect.isLessThan chi2 60.0 "buckets are even"
                // neighbours and the next draw are uncorrelated
                use a = u.narrow(0L, 0L, 199999L)
                use b = u.narrow(0L, 1L, 199999L)
                use u2 = HashStream.uniform s [| 200000L |] torch.CPU
                for other, what in [ b, "neighbouring elements"; u2.narrow(0L, 0L, 199999L), "consecutive draws" ] do
                    use ca = a.sub(Scalars.constant 0.5)
                    use cb = other.sub(Scalars.constant 0.5)
                    use r = (ca * cb).mean().mul(Scalars.constant 12.0)
                    Expect.isLessThan (abs (r.item<float32> () |> float)) 0.01 what
                use n = HashStream.normal (HashStream(SplitMix.key 2L 0L)) [| 200000L |] torch.CPU
                let nm, nv = moments n
                Expect.floatClose { absolute = 0.01; relative = 0.0 } nm 0.0 "normal mean"
                Expect.floatClose { absolute = 0.02; relative = 0.0 } nv 1.0 "normal variance"
            }

            test "a stream is a function of its key and draw order, and runs on meta" {
                let draw (key: uint64) =
                    let s = HashStream(key)
                    use a = HashStream.uniform s [| 64L |] torch.CPU
                    use b = HashStream.uniform s [| 64L |] torch.CPU
                    a.clone (), b.clone ()
                let a1, b1 = draw (SplitMix.key 5L 10L)
                let a2, b2 = draw (SplitMix.key 5L 10L)
                let a3, _ = draw (SplitMix.key 5L 11L)
                Expect.isTrue (tensorsEqual a1 a2 && tensorsEqual b1 b2) "same key, same draws"
                Expect.isFalse (tensorsEqual a1 b1) "the second draw differs from the first"
                Expect.isFalse (tensorsEqual a1 a3) "another step, other draws"
                use m = HashStream.normal (HashStream(1UL)) [| 3L; 4L |] torch.META
                Expect.sequenceEqual m.shape [| 3L; 4L |] "meta draw"
            }

            test "a training forward with the hashed stream is a function of (seed, step)" {
                let c = config "gmoe_test_patch8_32" 3
                use model = new Vit.SfMoeVit({ c with DropRate = 0.1; DropPathRate = 0.1 }, Dd.cpu, Some 0L)
                model.train () |> ignore
                use x = torch.randn([| 2L; 3L; 32L; 32L |], generator = generator 0L Dd.cpu)
                let run (step: int64) =
                    let ctx = Ctx.withStream (HashStream(SplitMix.key 9L step)) Ctx.train
                    use o = model.RunWith(ctx, x, false, false)
                    o.Logits.detach().clone ()
                use a = run 3L
                use b = run 3L
                use c4 = run 4L
                Expect.isTrue (tensorsEqual a b) "same (seed, step): same output"
                Expect.isFalse (tensorsEqual a c4) "another step: other dropout, drop-path and gate noise"
            }
        ]

        testList "padded dispatch" [
            for name, m in
                [ "image top-2 random", { MoeConfig.sfmoe with Scope = PerImage 1 }
                  "image top-2 threshold", { MoeConfig.sfmoe with SecondPolicy = SecondThreshold 0.2; CapacityTrain = Factor 0.8; Scope = PerImage 0 }
                  "image top-1 0.5", { MoeConfig.sfmoe with TopK = 1; CapacityTrain = Factor 0.5; Scope = PerImage 0 }
                  "batch top-1 priority, bias", { MoeConfig.gmoe with CapacityTrain = Factor 0.7; Router = CosineRouter 16; ExpertDropout = 0.0 }
                  "batch top-2 priority", { MoeConfig.gmoe with TopK = 2; CapacityTrain = Factor 0.6; Router = CosineRouter 16; ExpertDropout = 0.0 } ] ->
                test (sprintf "padded = sorted (outputs, statistics, gradients, float64): %s" name) {
                    let c = MoeTests.layerConfig 8 16 m
                    let f64 = { Dd.cpu with DType = torch.ScalarType.Float64 }
                    for seed in 1L .. 4L do
                        let p = Moe.init c f64 (Some(generator seed Dd.cpu))
                        let node = Layers.node (Moe.tree p)
                        torch.manual_seed seed |> ignore
                        use z0 = torch.randn([| 3L; 10L; 8L |], dtype = torch.ScalarType.Float64)
                        use dy = torch.randn([| 3L; 10L; 8L |], dtype = torch.ScalarType.Float64)
                        let run dispatch =
                            use z = z0.detach().requires_grad_(true)
                            node.zero_grad ()
                            use g = generator seed Dd.cpu
                            let o = Moe.forwardVia (Some dispatch) c (Ctx.withRng g Ctx.train) p Router.noDraws false z
                            use st = o.Stats
                            use l = (o.Y * dy).sum()
                            use total = l + o.Aux
                            total.backward ()
                            let grads = [ for struct (n, t) in node.named_parameters () -> n, t.grad.clone () ]
                            o.Y.detach (), z.grad.clone (), st.Load.clone (), st.Dropped.clone (), grads
                        let ys, gzs, ls, ds, gs = run Moe.Sorted
                        let yp, gzp, lp, dp, gp = run Moe.Padded
                        Expect.isTrue (tensorsEqual ls lp) "same load"
                        Expect.isTrue (tensorsEqual ds dp) "same dropped tokens"
                        expectClose 1e-10 "output" yp ys
                        expectClose 1e-10 "grad z" gzp gzs
                        for (n, a), (_, b) in List.zip gp gs do expectClose 1e-10 ("grad " + n) a b
                }
        ]

        test "weights are drawn on the CPU: the generator is a CPU generator and a meta build draws the same numbers" {
            use g = generator 1L meta
            Expect.equal g.device.``type`` DeviceType.CPU "generators are CPU generators"
            // The draws a build consumes do not depend on the device: after building on meta and on the CPU from
            // generators with the same seed, both generators are in the same state.
            let c = config "sfmoe_test_patch8_32" 3
            use g1 = generator 4L Dd.cpu
            use g2 = generator 4L Dd.cpu
            let p1, _ = Vit.init c Dd.cpu (Some g1)
            let p2, _ = Vit.init c meta (Some g2)
            use s1 = g1.get_state ()
            use s2 = g2.get_state ()
            Expect.isTrue (tensorsEqual s1 s2) "same generator state after both builds"
            ignore p1
            ignore p2
        }
    ]
