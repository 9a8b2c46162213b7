module SfMoe.Core.Tests.TrainTests

open System
open Expecto
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Tests.Support

/// A learnable problem: the class is which quadrant of the image is bright.
let private quadrants (n: int64) (seed: int64) =
    use g = generator seed Dd.cpu
    let y = torch.randint(4L, [| n |], generator = g)
    let x = torch.randn([| n; 3L; 32L; 32L |], generator = g).mul_(Scalars.constant 0.3)
    for i in 0L .. n - 1L do
        let q = y[i].item<int64> ()
        let r, c = (q / 2L) * 16L, (q % 2L) * 16L
        x[i].narrow(1L, r, 16L).narrow(2L, c, 16L).add_(Scalars.constant 1.0, Scalars.one) |> ignore
    x, y

[<Tests>]
let tests =
    testList "train" [
        test "ERM and SF-MoE learn a learnable problem: the loss falls and accuracy rises" {
            for name, alg in [ "vit_test_patch8_32", Train.Erm; "sfmoe_test_patch8_32", Train.SfMoeAlg; "gmoe_test_patch8_32", Train.GMoeAlg ] do
                let cfg = { (Registry.tryCreate name |> Result.defaultWith failwith) with NumClasses = 4 }
                use m = new Vit.SfMoeVit(cfg, Dd.cpu, Some 1L)
                use learner = new Train.Learner(Networks.VitNet m, alg, Optim.AdamL2, 1e-3, 0.0, 1L, Dd.cpu)
                let x, y = quadrants 64L 3L
                use x = x
                use y = y
                let first = learner.Update([ x ], [ y ])
                let mutable last = first
                for _ in 1..60 do last <- learner.Update([ x ], [ y ])
                Expect.isLessThan last.Ce (first.Ce * 0.5) (sprintf "%s: cross-entropy falls (%.3f -> %.3f)" name first.Ce last.Ce)
                use logits = learner.Predict(x)
                use correct = logits.argmax(1L).eq(y).sum()
                Expect.isGreaterThan (float (correct.item<int64> ()) / 64.0) 0.9 (sprintf "%s: fits its training set" name)
        }

        test "every freshly built network has finite parameters and norm layers at weight 1, bias 0" {
            let nets =
                [ "resnet50", Networks.resnet Dd.cpu 3 5 0.0
                  "mnist_cnn", Networks.mnist Dd.cpu 2 3
                  "sfmoe_test_patch8_32", Networks.VitNet(new Vit.SfMoeVit(Registry.tryCreate "sfmoe_test_patch8_32" |> Result.defaultWith failwith, Dd.cpu, Some 1L)) ]
            for name, net in nets do
                for struct (pn, p) in net.Module.named_parameters () do
                    use finite = p.isfinite().all()
                    Expect.isTrue (finite.item<bool> ()) (sprintf "%s: %s is finite" name pn)
                    if pn.EndsWith ".weight" && (pn.Contains "bn" || pn.Contains "norm" || pn.Contains "gn") && p.ndim = 1L then
                        use ones = p.eq(Scalars.one).all()
                        Expect.isTrue (ones.item<bool> ()) (sprintf "%s: %s starts at 1" name pn)
                net.Module.Dispose()
        }

        test "Adam matches torch.optim.Adam's update rule (L2 and decoupled decay)" {
            for kind in [ Optim.AdamL2; Optim.AdamW ] do
                use p = new Modules.Parameter(torch.tensor([| 1.0; -2.0; 3.0 |]), true)
                use opt = new Optim.Adam([ "p", p ], kind, 0.1, 0.01)
                let grads = [ [| 0.5; -1.0; 2.0 |]; [| -0.5; 0.25; 1.0 |] ]
                // reference, step by step in plain floats
                let mutable w = [| 1.0; -2.0; 3.0 |]
                let m = Array.zeroCreate 3
                let v = Array.zeroCreate 3
                for t, g in List.indexed grads do
                    p.grad <- torch.tensor g
                    opt.Update()
                    let step = float (t + 1)
                    for i in 0..2 do
                        let gi = if kind = Optim.AdamL2 then g[i] + 0.01 * w[i] else g[i]
                        if kind = Optim.AdamW then w[i] <- w[i] * (1.0 - 0.1 * 0.01)
                        m[i] <- 0.9 * m[i] + 0.1 * gi
                        v[i] <- 0.999 * v[i] + 0.001 * gi * gi
                        let denom = sqrt v[i] / sqrt (1.0 - 0.999 ** step) + 1e-8
                        w[i] <- w[i] - 0.1 / (1.0 - 0.9 ** step) * m[i] / denom
                for i in 0..2 do
                    Expect.floatClose { absolute = 1e-6; relative = 1e-6 } (p[int64 i].item<float> ()) w[i] (sprintf "%A p[%d]" kind i)
        }
    ]
