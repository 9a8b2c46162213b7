/// The benchmarks' arithmetic: training FLOPs from the token-expert pairs processed, and the table of GPU peaks.
module SfMoe.Core.Tests.BenchTests

open System
open Expecto
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Config
open SfMoe.Core.Tensors
open SfMoe.Cli.Bench

/// D 32, H 128 (mlp ratio 4), 2 blocks "F,S", 32x32 images of 8x8 patches (16 patches + CLS = 17 tokens), 10
/// classes, E 4, top-2, linear router.
let private tiny =
    { VitConfig.create 32 2 4 with
        ImgSize = 32
        PatchSize = 8
        NumClasses = 10
        Pattern = Pattern.parseOrFail "F,S"
        Moe = { MoeConfig.sfmoe with NumExperts = 4; TopK = 2; Router = LinearRouter } }

[<Tests>]
let tests =
    testList "bench" [
        test "step FLOPs of a tiny config equal a hand computation from its shapes and the pairs processed" {
            // per image, N = 17, D = 32, H = 128:
            //   patch embedding   16 patches x (3 x 8 x 8) x 32                          =  98,304
            //   attention (each)  N D 3D + 2 N^2 D + N D D = 52,224 + 18,496 + 17,408   =  88,128
            //   fusion FFN        2 N D H                                                = 139,264
            //   router            N D E = 17 x 32 x 4                                    =   2,176
            //   head              D x 10                                                 =     320
            //   dense total       98,304 + 2 x 88,128 + 139,264 + 2,176 + 320            = 416,320
            // per pair: 2 D H = 8,192. Batch 2, 50 pairs: 3 x 2 x (2 x 416,320 + 50 x 8,192) = 7,453,440
            Expect.equal (Flops.denseMacsPerImage tiny) 416_320L "dense MACs per image"
            Expect.equal (Flops.macsPerPair tiny) 8_192L "MACs per pair"
            Expect.equal (Flops.step tiny 2 50.0) 7_453_440.0 "FLOPs of the step"
            // every token through top-k experts in every sparse block: the closed form of Summary.table, x 3 x 2
            for name in [ "sfmoe_small_patch16_224"; "gmoe_test_patch8_32"; "deit_small_distilled_patch16_224" ] do
                let c = Registry.tryCreate name |> Result.defaultWith failwith
                let sparse = VitConfig.kinds c |> Array.filter (fun k -> k = Pattern.Sparse) |> Array.length
                let pairs = float (8 * VitConfig.numTokens c * c.Moe.TopK * sparse)
                let closed = Summary.table c |> List.sumBy (fun (_, _, _, _, m) -> m)
                Expect.floatClose Accuracy.veryHigh (Flops.step c 8 pairs) (6.0 * 8.0 * float closed) name
        }

        test "the peak table by GPU name and precision, n/a where a GPU lacks the mode" {
            let ok name p = match Peaks.lookup name p with Ok(v, _) -> v | Error e -> failtestf "%s %A: %s" name p e
            Expect.equal (ok "NVIDIA H100 80GB HBM3" Bf16) 989.0 "H100 bf16"
            Expect.equal (ok "NVIDIA H100 80GB HBM3" Tf32) 494.7 "H100 tf32"
            Expect.equal (ok "NVIDIA H100 80GB HBM3" Fp32) 66.9 "H100 fp32"
            Expect.equal (ok "NVIDIA H200" Bf16) 989.0 "H200 as H100"
            Expect.equal (ok "NVIDIA A100-SXM4-80GB" Bf16) 312.0 "A100 bf16"
            Expect.equal (ok "NVIDIA A100-SXM4-80GB" Tf32) 156.0 "A100 tf32"
            Expect.equal (ok "NVIDIA A100-SXM4-80GB" Fp32) 19.5 "A100 fp32"
            Expect.equal (ok "Tesla V100-SXM2-32GB" Fp32) 15.7 "V100 fp32"
            match Peaks.lookup "Tesla V100-SXM2-32GB" Tf32 with
            | Ok(v, s) ->
                Expect.equal v 15.7 "V100 tf32 computes in fp32"
                Expect.stringContains s "no TF32" s
            | Error e -> failtest e
            match Peaks.lookup "Tesla V100-SXM2-32GB" Bf16 with
            | Error e -> Expect.stringContains e "n/a: the V100 has no bf16" e
            | Ok _ -> failtest "V100 bf16 has no peak"
            match Peaks.lookup "NVIDIA GeForce RTX 4090" Bf16 with
            | Error e -> Expect.stringContains e "give --peak-tflops" e
            | Ok _ -> failtest "unknown GPU"
        }

        test "SFMOE_GPU_NAME names the GPU" {
            let before = Environment.GetEnvironmentVariable "SFMOE_GPU_NAME"
            try
                Environment.SetEnvironmentVariable("SFMOE_GPU_NAME", "NVIDIA H200")
                Expect.equal (Peaks.gpuName 0) (Some "NVIDIA H200") "the override"
            finally
                Environment.SetEnvironmentVariable("SFMOE_GPU_NAME", before)
        }
    ]
