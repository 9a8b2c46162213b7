/// The MoE layer and MoE models against the independent PyTorch reference (tests/fixtures/gen_moe_fixtures.py,
/// float64): identical routing indices and kept flags, outputs within 1e-5 relative, aux loss within 1e-6,
/// gradients of the input, router and experts within 1e-5 relative; through both dispatches of the layer.
module SfMoe.Core.Tests.MoeFixtureTests

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Tests.Support

let private layerCases =
    [ "image_top2_all_train"; "image_top2_none_eval"; "image_top2_threshold_train"; "image_top2_random_train"
      "image_top1_overflow_train"; "image_top2_dropless_train"; "batch_top1_dropless_eval"; "batch_top2_all_train"
      "batch_top2_priority_train"; "cosine_top1_priority_train"; "cosine_top1_eval"; "cosine_top2_image_gshard_train"
      "batch_top1_gshard_noise_train"; "sfmoe_authors" ]

/// The one-block config of a layer fixture, through the JSON config parser (which also validates it).
let private layerConfig (meta: JsonElement) : VitConfig * bool =
    let dim = meta.GetProperty("dim").GetInt32()
    let hidden = meta.GetProperty("hidden").GetInt32()
    let json =
        sprintf """{"img_size": 8, "patch_size": 8, "embed_dim": %d, "depth": 1, "num_heads": 1, "num_classes": 1, "mlp_ratio": %s, "pattern": "S", "moe": %s}"""
            dim (string (float hidden / float dim)) (meta.GetProperty("moe").GetRawText())
    let c = ConfigJson.parse Registry.tryCreate json
    Expect.equal (VitConfig.hidden c) hidden "hidden size"
    c, meta.GetProperty("training").GetBoolean()

/// One layer fixture through a given dispatch (None: the device's default, Sorted on the CPU).
let private layerCaseVia (dispatch: Moe.Dispatch option) (case: string) =
    test case {
        use fx = readSafeTensors (fixture (sprintf "moe/%s.safetensors" case))
        let c, training = layerConfig (fixtureConfig fx)
        let p = Moe.init c Dd.cpu (Some(generator 0L Dd.cpu))
        let tree = Layers.node (Moe.tree p)
        let paramNames = tree.state_dict().Keys |> Set.ofSeq
        Weights.load true tree [ for n, t in fx.Tensors do if paramNames.Contains n then yield n, t ] |> ignore
        use x = fx["x"].detach().requires_grad_(true)
        let draws = { Router.Uniform = fx.Find "draws.uniform"; Router.Noise = fx.Find "draws.noise" }
        let ctx = if training then Ctx.train else Ctx.eval
        let o = Moe.forwardVia dispatch c ctx p draws true x
        use y = o.Y
        use aux = o.Aux
        use r = o.Record.Value
        Expect.equal r.Capacity (fx["expected.capacity"].item<int64> ()) "capacity"
        Expect.isTrue (tensorsEqual r.Index fx["expected.index"]) "routing indices"
        use kept = r.Kept.to_type(torch.ScalarType.Int64)
        Expect.isTrue (tensorsEqual kept fx["expected.kept"]) "kept flags"
        Expect.isTrue (tensorsEqual r.Load fx["expected.load"]) "load per expert"
        expectClose 1e-5 "gates" r.Gate fx["expected.gate"]
        expectClose 1e-5 "probs" r.Probs fx["expected.probs"]
        expectClose 1e-5 "output" y fx["expected.y"]
        Expect.floatClose { absolute = 1e-6; relative = 0.0 } (aux.item<float32> () |> float) (fx["expected.aux"].item<float32> () |> float) "aux loss"
        Expect.floatClose { absolute = 1e-5; relative = 1e-5 } r.Balance (fx["expected.balance"].item<float32> () |> float) "balance"
        use prod = y * fx["dy"]
        use s = prod.sum()
        use loss = s + aux
        loss.backward ()
        expectClose 1e-5 "grad x" x.grad fx["expected.grad.x"]
        for KeyValue(n, t) in tree.named_parameters () |> Seq.map (fun struct (n, t) -> Collections.Generic.KeyValuePair(n, t)) do
            expectClose 1e-5 ("grad " + n) t.grad fx["expected.grad." + n]
    }

let private layerCase (case: string) = layerCaseVia None case

let private modelCase (case: string) (ignored: string list) =
    test case {
        use fx = readSafeTensors (fixture (sprintf "moe/%s.safetensors" case))
        let c = ConfigJson.parse Registry.tryCreate fx.Metadata["config"]
        use m = new Vit.SfMoeVit(c, Dd.cpu, Some 0L)
        let mapped = KeyMap.fromAuthors [ for n, t in fx.Tensors do if not (n.StartsWith "input." || n.StartsWith "expected.") then yield n, t ]
        Expect.equal mapped.Ignored ignored "ignored keys"
        Weights.load true m mapped.Tensors |> ignore
        m.eval () |> ignore
        use _ = torch.no_grad ()
        use g = generator 0L Dd.cpu
        use o = m.Run(fx["input.x"], rng = g)
        expectClose 1e-5 "logits" o.Logits fx["expected.logits"]
        Expect.floatClose { absolute = 1e-6; relative = 0.0 } (o.Aux.item<float32> () |> float) (fx["expected.aux"].item<float32> () |> float) "aux loss"
    }

[<Tests>]
let tests =
    testList "moe fixtures" [
        testList "layer" [ for c in layerCases -> layerCase c ]
        // The same fixtures through the fixed-size slot buffers that accelerators use (dropless cases fall back to
        // the sorted dispatch): identical routing, outputs and gradients.
        testList "layer, padded dispatch" [ for c in layerCases -> layerCaseVia (Some Moe.Padded) c ]
        testList "model" [
            modelCase "vit_sfmoe" []
            modelCase "vit_gmoe" [ "blocks.0.mlp._num_global_experts" ]
        ]
    ]
