module SfMoe.Core.Tests.MoeTests

open System
open Expecto
open TorchSharp
open SfMoe
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Pattern
open SfMoe.Core.Tests.Support

/// A one-block config carrying the MoE settings under test.
let layerConfig (dim: int) (hidden: int) (m: MoeConfig) =
    { VitConfig.create dim 1 1 with
        MlpRatio = float hidden / float dim
        ImgSize = 8
        PatchSize = 8
        Pattern = parseOrFail "S"
        Moe = m }

let private f64 = { Dd.cpu with DType = torch.ScalarType.Float64 }

/// Build a layer from a seed; optionally scale the router so routing is skewed.
let private layer (dd: Dd) (seed: int64) (c: VitConfig) = Moe.init c dd (Some(generator seed dd))

/// Brute force: every expert on every token, then the kept choices weighted by their gates.
let private bruteForce (p: Moe.Params) (z: Tensor) (r: Moe.Record) : Tensor =
    use _ = torch.no_grad ()
    let b, n, d = z.shape[0], z.shape[1], z.shape[2]
    use x = z.reshape(b * n, d)
    use all = Experts.applyAll p.Experts x // (E, S, D)
    let k = r.Index.shape[2]
    let out = torch.zeros_like(x)
    for j in 0L .. k - 1L do
        use idx = r.Index.select(2L, j).reshape(b * n)
        use g = r.Gate.select(2L, j).reshape(b * n, 1L)
        use kept = r.Kept.select(2L, j).reshape(b * n, 1L).to_type(x.dtype)
        use picked = all.permute(1L, 0L, 2L).gather(1L, idx.view(-1L, 1L, 1L).expand(-1L, 1L, d)).squeeze(1L) // (S, D)
        out.add_(picked * g * kept) |> ignore
    out.view(b, n, d)

let private configs =
    [ "image top-2 all 1.25", { MoeConfig.sfmoe with SecondPolicy = SecondAll; Scope = PerImage 1 }
      "image top-2 random", { MoeConfig.sfmoe with Scope = PerImage 1 }
      "image top-2 threshold", { MoeConfig.sfmoe with SecondPolicy = SecondThreshold 0.2; CapacityTrain = Factor 0.8; Scope = PerImage 0 }
      "image top-2 none", { MoeConfig.sfmoe with SecondPolicy = SecondNone; Scope = PerImage 1 }
      "image top-1 0.5", { MoeConfig.sfmoe with TopK = 1; CapacityTrain = Factor 0.5; Scope = PerImage 0 }
      "image top-2 dropless", { MoeConfig.sfmoe with SecondPolicy = SecondAll; CapacityTrain = Dropless; ExpertBias = true }
      "batch top-1 priority", { MoeConfig.gmoe with CapacityTrain = Factor 0.7; Router = CosineRouter 16; ExpertDropout = 0.0 }
      "batch top-2 priority", { MoeConfig.gmoe with TopK = 2; CapacityTrain = Factor 0.6; Router = CosineRouter 16; ExpertDropout = 0.0 }
      "batch top-2 linear", { MoeConfig.sfmoe with Scope = PerBatch; SecondPolicy = SecondAll; CapacityTrain = Factor 0.8 }
      "batch top-1 dropless", { MoeConfig.gmoe with CapacityTrain = Dropless; Router = CosineRouter 16; ExpertDropout = 0.0 } ]

/// Invariants of docs/moe.md on random inputs and weights, for every router, policy, scope and capacity.
let private invariants (name: string) (m: MoeConfig) =
    test (sprintf "invariants: %s" name) {
        for seed in 1L .. 6L do
            let c = layerConfig 8 16 m
            let p = layer Dd.cpu seed c
            // Sharpen or soften the router so that capacity binds in some seeds and not others.
            match p.Gate with
            | Router.Linear g -> use _ = torch.no_grad () in g.WGating.mul_((0.2 * float seed).ToScalar()) |> ignore
            | _ -> ()
            torch.manual_seed seed |> ignore
            let b, n = 3L, 10L
            use z = torch.randn(b, n, 8L)
            use g = generator seed Dd.cpu
            let o = Moe.forward c (Ctx.withRng g Ctx.train) p true z
            use y = o.Y
            use aux = o.Aux
            use r = o.Record.Value
            let k = int64 m.TopK
            let e = int64 m.NumExperts
            // at most k experts per token, all distinct
            Expect.sequenceEqual r.Index.shape [| b; n; k |] "index shape"
            if k = 2L then
                use same = r.Index.select(2L, 0L).eq(r.Index.select(2L, 1L))
                Expect.isFalse (same.any().item<bool>()) "the two choices differ"
            // no expert over capacity in any group
            let groups = match m.Scope with PerImage _ -> b | PerBatch -> 1L
            use oh = torch.nn.functional.one_hot(r.Index, e) // (B, N, k, E)
            use keptOh = oh * r.Kept.unsqueeze(-1L).to_type(torch.ScalarType.Int64)
            use perGroup = keptOh.reshape(groups, -1L, e).sum([| 1L |]) // (G, E)
            if r.Capacity >= 0L then
                Expect.isLessThanOrEqual (perGroup.max().item<int64>()) r.Capacity "no expert over capacity"
            else
                use firsts = r.Kept.select(2L, 0L)
                Expect.isTrue (firsts.all().item<bool>()) "dropless keeps every first choice"
            use loadSum = perGroup.sum([| 0L |])
            Expect.isTrue (tensorsEqual loadSum r.Load) "load counts kept pairs"
            // combine weights sum to at most 1 per token
            use w = (r.Gate * r.Kept.to_type(r.Gate.dtype)).sum([| 2L |])
            Expect.isLessThanOrEqual (w.max().item<float32>()) 1.0001f "combine weights <= 1"
            // a dropped token outputs zero
            use anyKept = r.Kept.any(2L)
            use dropped = anyKept.logical_not()
            if dropped.any().item<bool>() then
                use rows = y.index(dropped)
                Expect.equal (rows.abs().max().item<float32>()) 0.0f "dropped tokens output 0"
            // the sorted dispatch equals the brute-force sum over experts
            use bf = bruteForce p z r
            Expect.isLessThan (relErr y bf) 1e-5 "output = sum of kept gate * expert"
            // routing follows the probabilities: the first choice is the argmax
            use am = r.Probs.argmax(2L)
            Expect.isTrue (tensorsEqual am (r.Index.select(2L, 0L))) "first choice is the argmax"
    }

/// Central finite differences against autograd for the router and the experts (float64, tiny case).
let private finiteDifferences (name: string) (m: MoeConfig) =
    test (sprintf "gradients match finite differences: %s" name) {
        let c = layerConfig 4 6 m
        let p = layer f64 3L c
        match p.Gate with
        | Router.Linear g -> use _ = torch.no_grad () in g.WGating.mul_((0.3).ToScalar()) |> ignore
        | _ -> ()
        torch.manual_seed 5L |> ignore
        use z = torch.randn([| 2L; 5L; 4L |], dtype = torch.ScalarType.Float64)
        use dy = torch.randn([| 2L; 5L; 4L |], dtype = torch.ScalarType.Float64)
        let draws = { Router.Uniform = None; Router.Noise = None }
        let loss () =
            let o = Moe.forwardWith c Ctx.eval p draws false z
            use y = o.Y
            use aux = o.Aux
            use s = (y * dy).sum()
            s + aux
        let named = Layers.node (Moe.tree p)
        for KeyValue(pname, prm) in named.named_parameters () |> Seq.map (fun struct (n, t) -> Collections.Generic.KeyValuePair(n, t)) do
            named.zero_grad ()
            do
                use l = loss ()
                l.backward ()
            use grad = prm.grad.clone ()
            use flat = prm.detach().view(-1L)
            let count = int (min 6L flat.shape[0])
            for i in 0 .. count - 1 do
                let idx = int64 (i * int flat.shape[0] / count)
                let orig = flat[idx].item<float> ()
                let h = 1e-6
                let eval (v: float) =
                    use _ = torch.no_grad ()
                    flat[idx] <- torch.tensor(v, dtype = torch.ScalarType.Float64)
                    use l = loss ()
                    l.item<float> ()
                let fd = (eval (orig + h) - eval (orig - h)) / (2.0 * h)
                eval orig |> ignore
                let ad = (grad.view(-1L)[idx]).item<float> ()
                Expect.floatClose { absolute = 1e-6; relative = 1e-5 } ad fd (sprintf "%s[%d]" pname idx)
    }

[<Tests>]
let tests =
    testList "moe" [
        testList "invariants" [ for name, m in configs -> invariants name m ]
        testList "finite differences" [
            finiteDifferences "linear top-2 all, image, capacity" { MoeConfig.sfmoe with SecondPolicy = SecondAll; CapacityEval = Factor 1.0; Scope = PerImage 1; ExpertBias = true }
            finiteDifferences "linear top-1, dropless" { MoeConfig.sfmoe with TopK = 1; CapacityEval = Dropless }
            finiteDifferences "cosine top-1, batch, load+importance" { MoeConfig.gmoe with CapacityEval = Factor 1.0; Router = CosineRouter 8; ExpertDropout = 0.0 }
        ]

        test "capacity follows the authors' formulas" {
            let cap m tr n = Router.capacity m tr n
            Expect.equal (cap MoeConfig.sfmoe true 198L) 61L "SF-MoE train, N=198, E=4"
            Expect.equal (cap MoeConfig.sfmoe false 198L) 99L "SF-MoE eval"
            Expect.equal (cap MoeConfig.sfmoe true 197L) 61L "N=197 train"
            Expect.equal (cap MoeConfig.sfmoe false 197L) 98L "N=197 eval"
            let hybrid = { MoeConfig.sfmoe with NumExperts = 6 }
            Expect.equal (cap hybrid true 50L) 10L "hybrid train"
            Expect.equal (cap hybrid false 50L) 16L "hybrid eval"
            Expect.equal (cap MoeConfig.gmoe true (96L * 197L)) 4728L "GMoE: B=96, N=197, E=6"
            Expect.equal (cap { MoeConfig.sfmoe with CapacityTrain = Dropless } true 198L) -1L "dropless"
            Expect.equal (cap { MoeConfig.sfmoe with Scope = PerImage 4; CapacityTrain = Factor 0.01 } true 198L) 4L "min capacity"
        }

        test "balance loss oracles (spec §3.4)" {
            let e = 4L
            use uniform = torch.full([| 8L; e |], (0.25).ToScalar())
            use balanced = torch.tensor([| 0L; 1L; 2L; 3L; 0L; 1L; 2L; 3L |])
            use l = Losses.gshard 1L uniform balanced
            Expect.floatClose Accuracy.high (l.item<float32> () |> float) 1.0 "perfect balance gives 1"
            use collapsed = torch.zeros([| 8L; e |])
            collapsed.select(1L, 0L).fill_((1.0).ToScalar()) |> ignore
            use all0 = torch.zeros(8L, dtype = torch.ScalarType.Int64)
            use l2 = Losses.gshard 2L collapsed all0
            Expect.floatClose Accuracy.high (l2.item<float32> () |> float) 4.0 "full collapse gives E"
        }

        test "with every token on one expert and policy none, only the first C tokens get output" {
            let m = { MoeConfig.sfmoe with SecondPolicy = SecondNone; CapacityEval = Factor 1.0; Scope = PerImage 4 }
            let c = layerConfig 8 16 m
            let p = layer Dd.cpu 1L c
            match p.Gate with
            | Router.Linear g ->
                use _ = torch.no_grad ()
                g.WGating.zero_() |> ignore
                g.WGating.select(1L, 2L).fill_((1.0).ToScalar()) |> ignore
            | _ -> ()
            use z = torch.ones(2L, 12L, 8L) // logits favour expert 2 for every token
            let o = Moe.forward c Ctx.eval p true z
            use y = o.Y
            use aux = o.Aux
            use r = o.Record.Value
            Expect.equal r.Capacity 4L "C = max(4, min(12, floor(12/4)))"
            use kept = r.Kept.select(2L, 0L).to_type(torch.ScalarType.Int64)
            Expect.equal [ for i in 0L .. 11L -> kept[0L, i].item<int64> () ] [ 1L; 1L; 1L; 1L; 0L; 0L; 0L; 0L; 0L; 0L; 0L; 0L ] "token order, cls first"
            use nz = y.abs().sum([| 2L |]).gt((0.0).ToScalar())
            Expect.isTrue (tensorsEqual nz (kept.to_type(torch.ScalarType.Bool))) "only kept tokens have output"
            Expect.floatClose { absolute = 1e-4; relative = 1e-4 } (aux.item<float32> () |> float) 0.04 "collapse: aux = 0.01 * E"
        }

        test "batch-prioritised routing keeps the most confident tokens" {
            let m = { MoeConfig.sfmoe with TopK = 1; Scope = PerBatch; BatchPrioritized = true; CapacityEval = Factor 1.0 }
            let c = layerConfig 8 16 m
            let p = layer Dd.cpu 2L c
            match p.Gate with
            | Router.Linear g ->
                use _ = torch.no_grad ()
                g.WGating.zero_() |> ignore
                g.WGating[0L, 1L] <- torch.tensor 1.0f
            | _ -> ()
            // all tokens prefer expert 1, with confidence growing along the sequence
            use z = torch.zeros(1L, 16L, 8L)
            z.select(2L, 0L).copy_(torch.linspace(0.1, 3.0, 16L).unsqueeze(0L)) |> ignore
            let o = Moe.forward c Ctx.eval p true z
            use y = o.Y
            use aux = o.Aux
            use r = o.Record.Value
            Expect.equal r.Capacity 4L "k * int(1.0 * ceil(16/4))"
            let kept = [ for i in 0L .. 15L -> r.Kept[0L, i, 0L].item<bool> () ]
            Expect.equal kept (List.init 16 (fun i -> i >= 12)) "the last (most confident) 4 tokens"
        }

        test "upcycling copies the dense FFN into every expert" {
            let m = { MoeConfig.sfmoe with TopK = 1; CapacityEval = Dropless; ExpertBias = true }
            let c = layerConfig 8 16 m
            let p = layer Dd.cpu 4L c
            let dense = Mlp.init c Dd.cpu (Some(generator 9L Dd.cpu))
            Experts.copyDense p.Experts dense.Fc1 dense.Fc2
            use z = torch.randn(2L, 5L, 8L)
            let o = Moe.forward c Ctx.eval p true z
            use y = o.Y
            use aux = o.Aux
            use r = o.Record.Value
            use ffn = Mlp.forward c Ctx.eval dense z
            use g = r.Gate // top-1: y = g1 * FFN(z)
            use expected = ffn * g
            Expect.isLessThan (relErr y expected) 1e-5 "every expert computes the dense FFN"
        }

        test "upcycling a dense model: CopyDense with top-2 'all' dropless reproduces it; KeepInit drops the FFN" {
            let dense = Registry.tryCreate "vit_test_patch8_32" |> Result.defaultWith failwith
            use d = new Vit.SfMoeVit(dense, Dd.cpu, Some 1L)
            let sparseCfg =
                { dense with
                    Pattern = parseOrFail "[F,S]x2"
                    Moe = { MoeConfig.sfmoe with SecondPolicy = SecondAll; CapacityEval = Dropless; ExpertBias = true } }
            let s, report = Upcycle.model Upcycle.CopyDense d sparseCfg (Some 2L)
            use s = s
            Expect.equal (report.Upcycled |> List.map fst)
                [ for b in [ 1; 3 ] do for k in [ "fc1.weight"; "fc1.bias"; "fc2.weight"; "fc2.bias" ] -> sprintf "blocks.%d.mlp.%s" b k ] "upcycled keys"
            d.eval () |> ignore
            s.eval () |> ignore
            use x = torch.randn(2L, 3L, 32L, 32L)
            use yd = d.forward x
            use ys = s.forward x
            expectClose 1e-5 "g1 + g2 = 1 and identical experts give the dense FFN" ys yd
            let k, report2 = Upcycle.model Upcycle.KeepInit d { sparseCfg with Moe = { sparseCfg.Moe with ExpertBias = false } } (Some 2L)
            use k = k
            Expect.isEmpty report2.Upcycled "nothing copied"
            Expect.equal report2.Dropped.Length 8 "the dense FFN of both sparse blocks is dropped"
            use fresh = new Vit.SfMoeVit({ sparseCfg with Moe = { sparseCfg.Moe with ExpertBias = false } }, Dd.cpu, Some 2L)
            Expect.isTrue (tensorsEqual (k.state_dict()["blocks.1.mlp.experts.w1"]) (fresh.state_dict()["blocks.1.mlp.experts.w1"])) "experts keep their own init"
            Expect.isTrue (tensorsEqual (k.state_dict()["blocks.0.mlp.fc1.weight"]) (d.state_dict()["blocks.0.mlp.fc1.weight"])) "fusion blocks are copied"
        }

        test "eval with the random policy is deterministic given a generator" {
            let c = Registry.tryCreate "sfmoe_test_patch8_32" |> Result.defaultWith failwith
            use m = new Vit.SfMoeVit(c, Dd.cpu, Some 1L)
            m.eval () |> ignore
            // soften the routers so that the random second-expert draw matters
            for b in [ 1; 3 ] do
                use _ = torch.no_grad ()
                (m.state_dict()[sprintf "blocks.%d.mlp.gate.w_gating" b]).mul_((0.25).ToScalar()) |> ignore
            use x = torch.randn(4L, 3L, 32L, 32L)
            let run seed =
                use g = generator seed Dd.cpu
                use o = m.Run(x, returnRouting = true, rng = g)
                o.Logits.clone (), (snd o.Routing.Head).Kept.clone ()
            let (l1, k1), (l2, k2), (l3, k3) = run 7L, run 7L, run 8L
            Expect.isTrue (tensorsEqual l1 l2 && tensorsEqual k1 k2) "same generator seed, same result"
            Expect.isFalse (tensorsEqual k1 k3) "another seed draws other second experts"
        }

        test "bad configs name the field" {
            let bad m = match MoeConfig.validate m with Error e -> e | Ok _ -> failtest "should fail"
            Expect.equal (bad { MoeConfig.sfmoe with TopK = 3 }) "moe.top_k must be 1 or 2, got 3" "k"
            Expect.equal (bad { MoeConfig.sfmoe with NumExperts = 1 }) "moe.top_k (2) must not exceed moe.num_experts (1)" "k > E"
            Expect.equal (bad { MoeConfig.sfmoe with CapacityTrain = Factor 0.0 }) "moe.capacity_factor_train must be a number > 0 or \"dropless\", got 0" "cf"
            Expect.equal (bad { MoeConfig.sfmoe with CapacityEval = Factor -1.0 }) "moe.capacity_factor_eval must be a number > 0 or \"dropless\", got -1" "cf eval"
            Expect.equal (bad { MoeConfig.gmoe with GateNoise = 0.0 }) "moe.aux_loss \"load_importance\" needs moe.gate_noise > 0 (it sets the scale of the load estimate)" "noise"
            let err json =
                try ConfigJson.parse Registry.tryCreate json |> ignore; failtest "should fail"
                with :? ConfigException as e -> e.Message
            Expect.equal (err """{"model": "sfmoe_test_patch8_32", "moe": {"router": "softmax"}}""") "moe.router must be \"linear\" or \"cosine\", got \"softmax\"" "router"
            Expect.equal (err """{"model": "sfmoe_test_patch8_32", "moe": {"top_k": 5}}""") "moe.top_k must be 1 or 2, got 5" "json k"
            Expect.equal (err """{"model": "sfmoe_test_patch8_32", "moe": {"capacity_factor_eval": "lots"}}""") "moe.capacity_factor_eval must be a number > 0 or \"dropless\", got \"lots\"" "json cf"
            Expect.equal (err """{"embed_dim": 32, "depth": 2}""") "num_heads is required (or name a registry model with \"model\")" "required"
            Expect.equal (err """{"model": "sfmoe_test_patch8_32", "depth": "two"}""") "depth must be an integer, got a string" "type"
            Expect.equal (err """{"model": "sfmoe_test_patch8_32", "pattern": "[S,F"}""") "pattern: pattern \"[S,F\" at column 1: '[' is never closed" "pattern"
            Expect.stringContains (err """{"model": "nope"}""") "model: unknown model nope" "model"
        }

        test "JSON configs round-trip and accept extra keys" {
            for d in Registry.vits do
                let c = Registry.toConfig d |> Result.defaultWith failwith
                let back = ConfigJson.parse Registry.tryCreate (ConfigJson.toJson false c)
                Expect.equal back c d.Name
            let c = ConfigJson.parse Registry.tryCreate """{"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2, "num_classes": 3, "pattern": "S,F", "comment": "extra keys are fine", "moe": {"router": "cosine", "top_k": 1}}"""
            Expect.equal c.Moe.Router (CosineRouter 256) "router"
            Expect.equal c.Moe.Scope PerBatch "cosine starts from GMoE defaults"
            Expect.equal (print c.Pattern) "S,F" "pattern"
        }

        test "sparse models: closed-form parameter counts, including the spec's" {
            let sf = Registry.tryCreate "sfmoe_small_patch16_224" |> Result.defaultWith failwith
            Expect.equal (Summary.sparseBlockParams sf - (Summary.fusionBlockParams sf - 1_181_568L)) 4_720_128L "SF-MoE layer (spec §1.5)"
            Expect.equal (Summary.totalParams { sf with NumClasses = 1 } - 2L * (384L + 1L)) 28_743_552L "SF-MoE backbone"
            let gm = Registry.tryCreate "gmoe_small_patch16_224" |> Result.defaultWith failwith
            Expect.equal (Summary.sparseBlockParams gm - (Summary.fusionBlockParams gm - 1_181_568L)) 7_189_505L "GMoE layer (spec §1.5)"
            Expect.equal (Summary.totalParams { gm with NumClasses = 1 } - (384L + 1L)) 33_681_538L "GMoE backbone"
            for name in [ "sfmoe_test_patch8_32"; "gmoe_test_patch8_32" ] do
                let c = Registry.tryCreate name |> Result.defaultWith failwith
                use m = new Vit.SfMoeVit(c, Dd.cpu, Some 1L)
                Expect.equal (Layers.countParams m) (Summary.totalParams c) name
        }

        test "sparse blocks have exactly the documented state-dict names" {
            let names name =
                let c = Registry.tryCreate name |> Result.defaultWith failwith
                use m = new Vit.SfMoeVit(c, Dd.cpu, Some 1L)
                m.state_dict().Keys |> Seq.filter (fun k -> k.StartsWith "blocks.1.mlp.") |> Set.ofSeq
            Expect.equal (names "sfmoe_test_patch8_32") (set [ "blocks.1.mlp.gate.w_gating"; "blocks.1.mlp.experts.w1"; "blocks.1.mlp.experts.w2" ]) "SF-MoE"
            Expect.equal (names "gmoe_test_patch8_32")
                (set [ "blocks.1.mlp.gate.cosine_projector.weight"; "blocks.1.mlp.gate.cosine_projector.bias"; "blocks.1.mlp.gate.sim_matrix"
                       "blocks.1.mlp.gate.temperature"; "blocks.1.mlp.experts.w1"; "blocks.1.mlp.experts.w2"; "blocks.1.mlp.experts.b1"; "blocks.1.mlp.experts.b2" ]) "GMoE"
        }

        test "the model returns the summed aux loss and per-block routing records" {
            let c = Registry.tryCreate "sfmoe_test_patch8_32" |> Result.defaultWith failwith
            use m = new Vit.SfMoeVit(c, Dd.cpu, Some 1L)
            m.eval () |> ignore
            use x = torch.randn(2L, 3L, 32L, 32L)
            use g = generator 1L Dd.cpu
            use o = m.Run(x, returnRouting = true, rng = g)
            Expect.equal (o.Routing |> List.map fst) [ 1; 3 ] "sparse blocks of [F,S]x2"
            let sumBalance = o.Routing |> List.sumBy (fun (_, r) -> r.Balance * 0.01)
            Expect.floatClose { absolute = 1e-6; relative = 1e-5 } (o.Aux.item<float32> () |> float) sumBalance "aux = sum of weighted balances"
            let (_, r) = o.Routing.Head
            Expect.sequenceEqual r.Index.shape [| 2L; 18L; 2L |] "(B, N, k)"
            use dense = new Vit.SfMoeVit(Registry.tryCreate "vit_test_patch8_32" |> Result.defaultWith failwith, Dd.cpu, Some 1L)
            use x1 = torch.randn(2L, 3L, 32L, 32L)
            use od = dense.Run(x1)
            Expect.equal (od.Aux.item<float32> ()) 0.0f "no sparse blocks, no aux"
        }

        test "gradient reaches every parameter of an SF-MoE and a GMoE model" {
            for name in [ "sfmoe_test_patch8_32"; "gmoe_test_patch8_32" ] do
                let c = { (Registry.tryCreate name |> Result.defaultWith failwith) with DropPathRate = 0.0 }
                let c = { c with Moe = { c.Moe with SecondPolicy = SecondAll; ExpertDropout = 0.0; CapacityTrain = Dropless } }
                use m = new Vit.SfMoeVit(c, Dd.cpu, Some 2L)
                m.train () |> ignore
                use x = torch.randn(4L, 3L, 32L, 32L)
                use o = m.Run(x)
                use loss = o.Logits.pow(torch.tensor 2.0).sum() + o.Aux
                loss.backward ()
                for KeyValue(pn, p) in m.named_parameters () |> Seq.map (fun struct (n, p) -> Collections.Generic.KeyValuePair(n, p)) do
                    Expect.isNotNull p.grad (sprintf "%s: %s has a gradient" name pn)
                    use s = p.grad.abs().sum()
                    Expect.isGreaterThan (s.item<float32>()) 0.0f (sprintf "%s: %s has a non-zero gradient" name pn)
        }

        testSequenced <| test "no tensor leaks across 100 sparse forward passes" {
            let c = Registry.tryCreate "sfmoe_test_patch8_32" |> Result.defaultWith failwith
            use m = new Vit.SfMoeVit(c, Dd.cpu, Some 1L)
            m.eval () |> ignore
            use x = torch.randn(2L, 3L, 32L, 32L)
            use _ = torch.no_grad ()
            use g = generator 1L Dd.cpu
            let live =
                liveTensorsDuring (fun () ->
                    for _ in 1..100 do
                        let feats, ex = Vit.forwardFeatures m.Config (Ctx.withRng g Ctx.eval) m.Params m.Tokens false true x
                        feats.Dispose()
                        ex.Aux.Dispose()
                        for _, r in ex.Routing do (r :> IDisposable).Dispose()
                        for _, st in ex.Stats do (st :> IDisposable).Dispose())
            Expect.equal live 0L "layer functions dispose every temporary"
        }
    ]
