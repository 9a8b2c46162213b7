/// TorchSharp frees a temporary Scalar or Tensor in its finalizer, and the GC may run that finalizer while a native
/// call still uses it (the JIT ends the object's lifetime once its handle is read). These tests hammer the GC from
/// another thread during training and evaluation: the core must keep every argument alive across native calls.
module SfMoe.Core.Tests.StressTests

open System
open System.Threading
open Expecto
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Tensors

/// Run `f` while another thread collects garbage and runs finalizers in a tight loop.
let underGcPressure (f: unit -> unit) =
    use stop = new ManualResetEventSlim(false)
    let hammer =
        Thread(
            (fun () ->
                while not stop.IsSet do
                    GC.Collect()
                    GC.WaitForPendingFinalizers()),
            IsBackground = true)
    hammer.Start()
    try f () finally
        stop.Set()
        hammer.Join()

[<Tests>]
let tests =
    testSequenced <| testList "stress" [
        test "training steps survive a garbage collector running finalizers concurrently" {
            for name in [ "sfmoe_test_patch8_32"; "gmoe_test_patch8_32" ] do
                let cfg = Registry.tryCreate name |> Result.defaultWith failwith
                use m = new Vit.SfMoeVit(cfg, Dd.cpu, Some 1L)
                use learner = new Train.Learner(Networks.VitNet m, Train.SfMoeAlg, Optim.AdamL2, 1e-3, 1e-4, 1L, Dd.cpu)
                torch.manual_seed 1L |> ignore
                use x = torch.randn(8L, 3L, 32L, 32L)
                use y = torch.randint(10L, [| 8L |])
                underGcPressure (fun () ->
                    for _ in 1..150 do
                        let r = learner.Update([ x ], [ y ])
                        Expect.isTrue (Double.IsFinite r.Loss) "finite loss"
                        use p = learner.Predict(x)
                        ())
        }
    ]
