module SfMoe.Core.Tests.VitTests

open System
open Expecto
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Pattern
open SfMoe.Core.Vit
open SfMoe.Core.Tests.Support

/// The model config a ViT fixture was generated with.
let configOf (c: SafeTensors.Contents) : VitConfig =
    let j = fixtureConfig c
    { VitConfig.create (jint j "embed_dim") (jint j "depth") (jint j "num_heads") with
        ImgSize = jint j "img_size"
        PatchSize = jint j "patch_size"
        InChans = jint j "in_chans"
        MlpRatio = jfloat j "mlp_ratio"
        NumClasses = jint j "num_classes"
        Distilled = jbool j "distilled"
        QkvBias = jbool j "qkv_bias" }

let weightsOf (c: SafeTensors.Contents) =
    c.Tensors |> List.filter (fun (n, _) -> not (n.StartsWith "input." || n.StartsWith "expected."))

let private tiny =
    { VitConfig.create 32 4 4 with ImgSize = 32; PatchSize = 8; NumClasses = 5 }

let private parity (case: string) =
    test (sprintf "matches the PyTorch reference: %s" case) {
        use fx = readSafeTensors (fixture (sprintf "vit/%s.safetensors" case))
        let cfg = configOf fx
        use m = new SfMoeVit(cfg)
        let report = Weights.load true m (weightsOf fx)
        Expect.isEmpty report.Missing "no missing keys"
        m.eval () |> ignore
        use _ = torch.no_grad ()
        use o = m.Run(fx["input.x"], returnAttention = true)
        expectClose 1e-5 "logits" o.Logits fx["expected.logits"]
        expectClose 1e-5 "features" o.Features fx["expected.features"]
        Expect.equal o.Attention.Length cfg.Depth "one attention map per block"
        for i, a in List.indexed o.Attention do
            expectClose 1e-5 (sprintf "attention of block %d" i) a fx[sprintf "expected.attn.%d" i]
        // The fused attention path (no maps requested) gives the same logits.
        use logits = m.forward fx["input.x"]
        expectClose 1e-5 "logits (fused attention)" logits fx["expected.logits"]
    }

[<Tests>]
let tests =
    testList "vit" [
        testList "fixture parity" [ for c in [ "plain"; "distilled"; "resample"; "grayscale" ] -> parity c ]

        test "strict loading names missing, unexpected and mis-shaped keys" {
            use fx = readSafeTensors (fixture "vit/plain.safetensors")
            use m = new SfMoeVit({ configOf fx with NumClasses = 6 })
            let ws = weightsOf fx |> List.filter (fun (n, _) -> n <> "norm.bias")
            use extra = torch.zeros(3L)
            let e = Expect.throwsC (fun () -> Weights.load true m (("extra.key", extra) :: ws) |> ignore) id
            Expect.stringContains e.Message "missing keys: norm.bias" "missing"
            Expect.stringContains e.Message "unexpected keys: extra.key" "unexpected"
            Expect.stringContains e.Message "head.weight: expected shape [6, 32], found [5, 32]" "mismatch"
        }

        test "output shapes for plain and distilled models" {
            for distilled in [ false; true ] do
                let cfg = { tiny with Distilled = distilled }
                use m = new SfMoeVit(cfg, Dd.cpu, Some 1L)
                use x = torch.randn(3L, 3L, 32L, 32L)
                use o = m.Run(x, returnAttention = true)
                let n = 16L + (if distilled then 2L else 1L)
                Expect.sequenceEqual o.Logits.shape [| 3L; 5L |] "logits"
                Expect.sequenceEqual o.Features.shape [| 3L; n; 32L |] "features"
                Expect.sequenceEqual o.Attention.Head.shape [| 3L; 4L; n; n |] "attention"
        }

        test "other image sizes resample the position embedding" {
            use m = new SfMoeVit(tiny, Dd.cpu, Some 1L)
            m.eval () |> ignore
            use x = torch.randn(2L, 3L, 48L, 24L)
            use y = m.forward x
            Expect.sequenceEqual y.shape [| 2L; 5L |] "logits"
            use same = posEmbedFor tiny m.Tokens.Pos 4L 4L
            Expect.isTrue (tensorsEqual same (m.Tokens.Pos)) "configured grid is unchanged"
            use bigger = posEmbedFor tiny m.Tokens.Pos 6L 3L
            Expect.sequenceEqual bigger.shape [| 1L; 19L; 32L |] "resampled"
        }

        test "bad inputs name what is wrong" {
            use m = new SfMoeVit(tiny, Dd.cpu, Some 1L)
            use x1 = torch.randn(2L, 1L, 32L, 32L)
            let e = Expect.throwsC (fun () -> m.forward x1 |> ignore) id
            Expect.stringContains e.Message "expected 3 channels (in_chans), got 1" "channels"
            use x2 = torch.randn(2L, 3L, 30L, 32L)
            let e = Expect.throwsC (fun () -> m.forward x2 |> ignore) id
            Expect.stringContains e.Message "multiples of patch_size 8, got 30x32" "size"
            use x3 = torch.randn(3L, 32L, 32L)
            let e = Expect.throwsC (fun () -> m.forward x3 |> ignore) id
            Expect.stringContains e.Message "expected images of shape (B, 3, H, W), got [3, 32, 32]" "rank"
        }

        test "config validation names the field" {
            let bad f = match VitConfig.validate (f tiny) with Error e -> e | Ok _ -> failtest "should fail"
            Expect.equal (bad (fun c -> { c with NumHeads = 5 })) "embed_dim (32) must be divisible by num_heads (5)" "heads"
            Expect.equal (bad (fun c -> { c with ImgSize = 30 })) "img_size (30) must be a multiple of patch_size (8)" "img"
            Expect.equal (bad (fun c -> { c with DropPathRate = 1.5 })) "drop_path_rate must be in [0, 1), got 1.5" "dpr"
            Expect.equal (bad (fun c -> { c with Pattern = parseOrFail "[S,F]x3" })) "pattern \"[S,F]x3\" has 6 blocks but depth is 4" "pattern"
            Expect.equal (bad (fun c -> { c with NumClasses = 0 })) "num_classes must be >= 1, got 0" "classes"
        }

        test "gradient reaches every parameter" {
            let cfg = { tiny with Distilled = true }
            use m = new SfMoeVit(cfg, Dd.cpu, Some 2L)
            m.train () |> ignore
            use x = torch.randn(2L, 3L, 32L, 32L)
            use y = m.forward x
            use loss = y.pow(torch.tensor 2.0).sum()
            loss.backward ()
            for KeyValue(name, p) in m.named_parameters () |> Seq.map (fun struct (n, p) -> Collections.Generic.KeyValuePair(n, p)) do
                Expect.isNotNull p.grad (sprintf "%s has a gradient" name)
                use s = p.grad.abs().sum()
                Expect.isGreaterThan (s.item<float32>()) 0.0f (sprintf "%s has a non-zero gradient" name)
        }

        test "parameter count equals the closed form and the published counts" {
            for name, published in [ "vit_tiny_patch16_224", 5_717_416L
                                     "deit_small_patch16_224", 22_050_664L
                                     "vit_base_patch16_224", 86_567_656L
                                     "deit_small_distilled_patch16_224", 22_436_432L ] do
                let cfg = Registry.tryCreate name |> Result.defaultWith failwith
                Expect.equal (Summary.totalParams cfg) published (sprintf "%s closed form" name)
            for cfg in [ tiny; { tiny with Distilled = true; QkvBias = false; MlpRatio = 2.5; InChans = 1 } ] do
                use m = new SfMoeVit(cfg, Dd.cpu, Some 3L)
                Expect.equal (Layers.countParams m) (Summary.totalParams cfg) "counted = closed form"
                Expect.equal (Summary.parts m |> List.sumBy (fun p -> p.Params)) (Summary.totalParams cfg) "parts add up"
            let small = Registry.tryCreate "deit_small_distilled_patch16_224" |> Result.defaultWith failwith
            Expect.equal (Summary.fusionBlockParams small) 1_774_464L "one dense DeiT-S block (spec §1.5)"
        }

        test "state-dict names follow timm" {
            use m = new SfMoeVit({ tiny with Distilled = true; Depth = 1; Pattern = dense 1 }, Dd.cpu, Some 1L)
            let names = m.state_dict().Keys |> Set.ofSeq
            let expected =
                set [ "cls_token"; "dist_token"; "pos_embed"; "patch_embed.proj.weight"; "patch_embed.proj.bias"
                      "blocks.0.norm1.weight"; "blocks.0.norm1.bias"; "blocks.0.attn.qkv.weight"; "blocks.0.attn.qkv.bias"
                      "blocks.0.attn.proj.weight"; "blocks.0.attn.proj.bias"; "blocks.0.norm2.weight"; "blocks.0.norm2.bias"
                      "blocks.0.mlp.fc1.weight"; "blocks.0.mlp.fc1.bias"; "blocks.0.mlp.fc2.weight"; "blocks.0.mlp.fc2.bias"
                      "norm.weight"; "norm.bias"; "head.weight"; "head.bias"; "head_dist.weight"; "head_dist.bias" ]
            Expect.equal names expected "keys"
        }

        test "initialisation follows timm and is a function of the seed" {
            use a = new SfMoeVit(tiny, Dd.cpu, Some 7L)
            use b = new SfMoeVit(tiny, Dd.cpu, Some 7L)
            use c = new SfMoeVit(tiny, Dd.cpu, Some 8L)
            let sa, sb, sc = a.state_dict (), b.state_dict (), c.state_dict ()
            for KeyValue(k, t) in sa do
                Expect.isTrue (tensorsEqual t sb[k]) (sprintf "%s equal for equal seeds" k)
            Expect.isFalse (tensorsEqual sa["blocks.0.attn.qkv.weight"] sc["blocks.0.attn.qkv.weight"]) "seed changes weights"
            use std = sa["blocks.0.mlp.fc1.weight"].std()
            Expect.floatClose { absolute = 0.002; relative = 0.0 } (std.item<float32>() |> float) 0.02 "linear std 0.02"
            Expect.isTrue (sa["blocks.0.mlp.fc1.bias"].count_nonzero().item<int64>() = 0L) "zero bias"
            Expect.isTrue (sa["norm.weight"].eq(torch.tensor 1.0f).all().item<bool>()) "LayerNorm weight 1"
        }

        test "drop-path follows timm's linear schedule" {
            let rates = VitConfig.dropPathRates { tiny with DropPathRate = 0.3 }
            Expect.sequenceEqual (rates |> Array.map (fun r -> Math.Round(r, 6))) [| 0.0; 0.1; 0.2; 0.3 |] "linear"
            use m = new SfMoeVit({ tiny with DropPathRate = 0.3 }, Dd.cpu, Some 1L)
            Expect.sequenceEqual (m.Params.Blocks |> Array.map (fun b -> Math.Round(b.DropPath, 6))) [| 0.0; 0.1; 0.2; 0.3 |] "blocks"
        }

        test "dropout and drop-path are seeded by the context's generator" {
            let cfg = { tiny with DropRate = 0.2; AttnDropRate = 0.1; DropPathRate = 0.3 }
            use m = new SfMoeVit(cfg, Dd.cpu, Some 1L)
            m.train () |> ignore
            use x = torch.randn(2L, 3L, 32L, 32L)
            let run seed =
                use g = generator seed Dd.cpu
                use o = m.Run(x, rng = g)
                o.Logits.detach().clone ()
            use a = run 5L
            use b = run 5L
            use c = run 6L
            Expect.isTrue (tensorsEqual a b) "same generator seed, same output"
            Expect.isFalse (tensorsEqual a c) "different seed, different output"
            m.eval () |> ignore
            use e1 = m.forward x
            use e2 = m.forward x
            Expect.isTrue (tensorsEqual e1 e2) "eval is deterministic"
        }

        testSequenced <| test "no tensor leaks across 100 forward passes" {
            use m = new SfMoeVit({ tiny with Distilled = true }, Dd.cpu, Some 1L)
            m.eval () |> ignore
            use x = torch.randn(2L, 3L, 32L, 32L)
            use _ = torch.no_grad ()
            let live =
                liveTensorsDuring (fun () ->
                    for _ in 1..100 do
                        let feats, ex = forwardFeatures m.Config Ctx.eval m.Params m.Tokens true false x
                        use logits = forwardHead Ctx.eval m.Params feats
                        feats.Dispose()
                        ex.Aux.Dispose()
                        for a in ex.Attention do a.Dispose())
            Expect.equal live 0L "layer functions dispose every temporary"
            let live = liveTensorsDuring (fun () -> for _ in 1..100 do (m.forward x).Dispose())
            Expect.equal live 0L "module forward"
        }

        test "registry: every variant has a valid config; unknown names suggest near ones" {
            for d in Registry.vits do
                Expect.isOk (Registry.toConfig d) d.Name
            match Registry.tryCreate "vit_smal_patch16_224" with
            | Error e -> Expect.stringContains e "did you mean vit_small_patch16_224" "suggestion"
            | Ok _ -> failtest "unknown name accepted"
        }

        test "registry smoke: the small variants build and run" {
            for d in Registry.vits |> List.filter (fun d -> d.Size = "test" || d.Size = "tiny") do
                let cfg = Registry.toConfig d |> Result.defaultWith failwith
                use m = new SfMoeVit(cfg, Dd.cpu, Some 1L)
                m.eval () |> ignore
                use _ = torch.no_grad ()
                use x = torch.randn(1L, int64 cfg.InChans, int64 cfg.ImgSize, int64 cfg.ImgSize)
                use y = m.forward x
                Expect.sequenceEqual y.shape [| 1L; int64 cfg.NumClasses |] d.Name
        }
    ]
