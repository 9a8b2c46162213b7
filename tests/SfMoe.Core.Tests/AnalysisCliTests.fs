/// The analysis commands as a user runs them (separate processes): each writes its files, on models trained for a few
/// steps here (an SF-MoE and a dense ViT), and fails with one line on bad input.
module SfMoe.Core.Tests.AnalysisCliTests

open System
open System.IO
open System.Text.Json
open Expecto
open SfMoe.Core
open SfMoe.Core.Tests.Support
open SfMoe.Core.Tests.CliTests

let private root =
    lazy
        (let d = Directory.CreateTempSubdirectory("sfmoe-analysis-cli-").FullName
         AppDomain.CurrentDomain.ProcessExit.Add(fun _ -> try Directory.Delete(d, true) with _ -> ())
         d)

/// Two tiny runs, trained once for all the tests: runs/sfmoe (SF-MoE, [F,S]x2) and runs/vit (ERM, a dense ViT).
let private runs =
    lazy
        (let dir = Path.Combine(root.Force(), "runs")
         for name, extra in [ "sfmoe", []; "vit", [ "--algorithm"; "ERM"; "--model"; "vit_test_patch8_32" ] ] do
             let r =
                 sfmoe (
                     [ "train"; "--steps"; "6"; "--checkpoint-freq"; "3"; "--synthetic-size"; "28"; "--batch-size"; "8"
                       "--quiet"; "--no-timings"; "--output-dir"; Path.Combine(dir, name) ]
                     @ extra
                 )
             if r.Code <> 0 then failtestf "training %s failed: %s" name r.Err
         dir)

let private model name = Path.Combine(runs.Force(), name, "model.safetensors")
let private out name = Path.Combine(root.Force(), "out", name)

/// A PNG file of at least `minW` x `minH` pixels (read from its IHDR).
let private expectPng (path: string) (minW: int) (minH: int) =
    Expect.isTrue (File.Exists path) (sprintf "%s exists" path)
    let b = File.ReadAllBytes path
    Expect.sequenceEqual b[0..7] [| 0x89uy; 0x50uy; 0x4Euy; 0x47uy; 0x0Duy; 0x0Auy; 0x1Auy; 0x0Auy |] (path + ": PNG signature")
    let be (i: int) = (int b[i] <<< 24) ||| (int b[i + 1] <<< 16) ||| (int b[i + 2] <<< 8) ||| int b[i + 3]
    Expect.isGreaterThanOrEqual (be 16) minW (path + ": width")
    Expect.isGreaterThanOrEqual (be 20) minH (path + ": height")

let private expectOneLineError (r: Run) (fragment: string) =
    Expect.equal r.Code 2 (sprintf "exit code 2 (stderr: %s)" r.Err)
    Expect.stringStarts r.Err "sfmoe: error: " "prefix"
    Expect.stringContains r.Err fragment "message"
    Expect.isFalse (r.Err.Contains "   at ") "no stack trace"

[<Tests>]
let tests =
    testSequenced
    <| testList "analysis cli" [
        test "analyze routing writes routing.json, routing.md, load, usage heatmaps and expert maps" {
            let o = out "routing"
            let r = sfmoe [ "analyze"; "routing"; "--checkpoint"; model "sfmoe"; "--max-images"; "5"; "--samples"; "1"; "--output-dir"; o ]
            Expect.equal r.Code 0 r.Err
            Expect.stringContains r.Out "blocks.1" "table"
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(o, "routing.json")))
            let blocks = doc.RootElement.GetProperty("blocks")
            Expect.equal (blocks.GetArrayLength()) 2 "two sparse blocks"
            Expect.equal (doc.RootElement.GetProperty("images").GetInt32()) 20 "5 images x 4 environments"
            for b in blocks.EnumerateArray() do
                for key in [ "top1_load"; "topk_load"; "processed_load" ] do
                    let v = [ for x in b.GetProperty(key).EnumerateArray() -> x.GetDouble() ]
                    Expect.equal v.Length 4 key
                    Expect.floatClose Accuracy.medium (List.sum v) 1.0 (key + " sums to 1")
                for key in [ "dropped_token_fraction"; "router_entropy"; "router_entropy_normalized"; "top1_margin" ] do
                    Expect.isTrue (b.GetProperty(key).GetDouble() >= 0.0) key
                Expect.equal (b.GetProperty("usage_by_domain").EnumerateObject() |> Seq.length) 4 "domains"
                Expect.equal (b.GetProperty("usage_by_class").EnumerateObject() |> Seq.length) 7 "classes"
            Expect.stringContains (File.ReadAllText(Path.Combine(o, "routing.md"))) "| domain | e0 | e1 | e2 | e3 |" "markdown tables"
            expectPng (Path.Combine(o, "load.png")) 1000 400
            for b in [ 1; 3 ] do
                expectPng (Path.Combine(o, sprintf "usage_domain_block%d.png" b)) 400 250
                expectPng (Path.Combine(o, sprintf "usage_class_block%d.png" b)) 400 250
            let maps = Directory.GetFiles(o, "expert_map_*.png")
            Expect.equal maps.Length 4 "one expert map per environment"
            for m in maps do expectPng m 1000 400
        }
        test "analyze attributes writes the attribute x expert histogram from the Synthetic keypoints" {
            let o = out "attributes"
            let r = sfmoe [ "analyze"; "attributes"; "--checkpoint"; model "sfmoe"; "--max-images"; "4"; "--output-dir"; o ]
            Expect.equal r.Code 0 r.Err
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(o, "attributes.json")))
            let b0 = doc.RootElement.GetProperty("blocks").Item(0)
            let attrs = b0.GetProperty("attributes")
            Expect.equal (attrs.EnumerateObject() |> Seq.length) 36 "35 shape parts + background"
            let bg = attrs.GetProperty("background")
            Expect.equal (bg.GetProperty("keypoints").GetInt32()) 32 "two background points x 16 images"
            Expect.floatClose Accuracy.medium ([ for x in bg.GetProperty("normalized").EnumerateArray() -> x.GetDouble() ] |> List.sum) 1.0 "rows normalised"
            Expect.equal ([ for x in bg.GetProperty("counts").EnumerateArray() -> x.GetDouble() ] |> List.sum) (32.0 * 9.0) "9 patches per keypoint"
            Expect.isTrue (File.Exists(Path.Combine(o, "attributes.md"))) "markdown"
            expectPng (Path.Combine(o, "attributes_block1.png")) 500 800
            expectPng (Path.Combine(o, "attributes_block3.png")) 500 800
        }
        test "analyze attributes reads a keypoints JSON for an image folder" {
            let imgs = Path.Combine(root.Force(), "imgs")
            Directory.CreateDirectory(Path.Combine(imgs, "a")) |> ignore
            File.Copy(fixture "images/photo_500x375.jpg", Path.Combine(imgs, "a", "photo.jpg"), true)
            let kp = Path.Combine(root.Force(), "kp.json")
            File.WriteAllText(kp, """{"a/photo.jpg": {"beak": [250, 100], "tail": [20, 350]}, "missing.jpg": {"beak": [1, 1]}}""")
            let o = out "attributes-folder"
            let r = sfmoe [ "analyze"; "attributes"; "--checkpoint"; model "sfmoe"; "--image-root"; imgs; "--keypoints"; kp; "--output-dir"; o ]
            Expect.equal r.Code 0 r.Err
            Expect.stringContains r.Err "missing.jpg" "the unreadable image is reported"
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(o, "attributes.json")))
            Expect.equal (doc.RootElement.GetProperty("images").GetInt32()) 1 "one image"
            let attrs = doc.RootElement.GetProperty("blocks").Item(0).GetProperty("attributes")
            let names = [ for p in attrs.EnumerateObject() -> p.Name ]
            Expect.equal names [ "beak"; "tail" ] "attributes"
        }
        test "analyze attention writes per-head grids and head redundancy for two models" {
            let o = out "attention"
            let r =
                sfmoe [ "analyze"; "attention"; "--checkpoint"; model "vit"; "--checkpoint"; model "sfmoe"
                        fixture "images/photo_500x375.jpg"; fixture "images/rgb_37x53.png"
                        "--threshold"; "0.6"; "--output-dir"; o ]
            Expect.equal r.Code 0 r.Err
            for m in [ "vit"; "sfmoe" ] do
                for img in [ "photo_500x375"; "rgb_37x53" ] do
                    expectPng (Path.Combine(o, sprintf "attention_%s_%s.png" m img)) 1500 300
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(o, "redundancy.json")))
            let models = [ for m in doc.RootElement.GetProperty("models").EnumerateArray() -> m ]
            Expect.equal [ for m in models -> m.GetProperty("model").GetString() ] [ "vit"; "sfmoe" ] "models"
            for m in models do
                let v = [ for x in m.GetProperty("redundancy").EnumerateArray() -> x.GetDouble() ]
                Expect.equal v.Length 4 "one value per block"
                for x in v do Expect.isTrue (x > 0.0 && x <= 1.0 + 1e-9) "a similarity in (0, 1]"
                let c = [ for x in m.GetProperty("pattern_correlation").EnumerateArray() -> x.GetDouble() ]
                for x in c do Expect.isTrue (x >= -1.0 - 1e-9 && x <= 1.0 + 1e-9) "a correlation in [-1, 1]"
            Expect.isTrue (File.Exists(Path.Combine(o, "redundancy.md"))) "markdown"
            expectPng (Path.Combine(o, "redundancy.png")) 600 300
            let r2 = sfmoe [ "analyze"; "attention"; "--checkpoint"; model "sfmoe"; "--dataset"; "Synthetic"; "--max-images"; "2"; "--samples"; "2"; "--block"; "1"; "--output-dir"; out "attention-ds" ]
            Expect.equal r2.Code 0 r2.Err
            Expect.equal (Directory.GetFiles(out "attention-ds", "attention_*.png").Length) 2 "two dataset images drawn"
        }
        test "plot draws each run's curves and a comparison" {
            let o = out "plot"
            let r = sfmoe [ "plot"; "--input-dir"; runs.Force(); "--output-dir"; o ]
            Expect.equal r.Code 0 r.Err
            expectPng (Path.Combine(o, "curves_sfmoe.png")) 1000 800
            expectPng (Path.Combine(o, "curves_vit.png")) 1000 400
            expectPng (Path.Combine(o, "curves_compare.png")) 1000 800
        }
        test "profile prints the model next to its dense twin, MACs as Summary.table" {
            let r = sfmoe [ "profile"; "--model"; "sfmoe_test_patch8_32"; "--batch-size"; "2"; "--warmup"; "0"; "--repeats"; "1"; "--json" ]
            Expect.equal r.Code 0 r.Err
            use doc = JsonDocument.Parse r.Out
            let cfg = Registry.tryCreate "sfmoe_test_patch8_32" |> Result.defaultWith failwith
            let twin = { cfg with Pattern = Pattern.parseOrFail "Fx4" }
            let macs (c: Config.VitConfig) = Summary.table c |> List.sumBy (fun (_, _, _, _, m) -> m)
            let m, t = doc.RootElement.GetProperty("model"), doc.RootElement.GetProperty("dense_twin")
            Expect.equal (m.GetProperty("total_macs").GetInt64()) (macs cfg) "model MACs"
            Expect.equal (t.GetProperty("total_macs").GetInt64()) (macs twin) "dense twin MACs"
            Expect.equal (m.GetProperty("total_params").GetInt64()) (Summary.totalParams cfg) "params"
            Expect.equal (t.GetProperty("pattern").GetString()) "Fx4" "twin pattern"
            let parts = [ for p in m.GetProperty("parts").EnumerateArray() -> p.GetProperty("macs").GetInt64() ]
            Expect.equal parts [ for _, _, _, _, x in Summary.table cfg -> x ] "MACs per block"
            Expect.isTrue (m.GetProperty("timings").GetProperty("train_step_ms").GetDouble() > 0.0) "measured"
            let text = sfmoe [ "profile"; "--model"; "sfmoe_test_patch8_32"; "--no-timing" ]
            Expect.equal text.Code 0 text.Err
            Expect.stringContains text.Out "active parameters per token" "summary"
            Expect.stringContains text.Out "blocks.3  S" "per block"
        }
        test "cub-keypoints converts CUB-200-2011's part files" {
            let cub = Path.Combine(root.Force(), "CUB_200_2011")
            Directory.CreateDirectory(Path.Combine(cub, "parts")) |> ignore
            File.WriteAllText(Path.Combine(cub, "images.txt"), "1 001.Albatross/a.jpg\n")
            File.WriteAllText(Path.Combine(cub, "parts", "parts.txt"), "1 beak\n2 left wing\n")
            File.WriteAllText(Path.Combine(cub, "parts", "part_locs.txt"), "1 1 3.0 4.0 1\n1 2 0 0 0\n")
            let o = out "cub.json"
            let r = sfmoe [ "analyze"; "cub-keypoints"; "--cub-dir"; cub; "--output"; o ]
            Expect.equal r.Code 0 r.Err
            use doc = JsonDocument.Parse(File.ReadAllText o)
            Expect.equal (doc.RootElement.GetProperty("001.Albatross/a.jpg").GetProperty("beak").GetRawText().Replace(" ", "").Replace("\n", "")) "[3,4]" "visible part"
        }
        test "analysis errors are one line" {
            expectOneLineError (sfmoe [ "analyze"; "routing"; "--checkpoint"; "nope.safetensors"; "--output-dir"; out "x" ]) "nope.safetensors: file not found"
            expectOneLineError (sfmoe [ "analyze"; "attention"; "--checkpoint"; model "sfmoe"; "--output-dir"; out "x" ]) "give image files or --dataset"
            expectOneLineError (sfmoe [ "analyze"; "routing"; "--checkpoint"; model "vit"; "--output-dir"; out "x" ]) "has no sparse blocks"
            expectOneLineError (sfmoe [ "analyze"; "attention"; "--checkpoint"; model "sfmoe"; "--dataset"; "Synthetic"; "--block"; "7"; "--output-dir"; out "x" ]) "has blocks 0..3"
            expectOneLineError (sfmoe [ "plot"; "--input-dir"; out "nothing-here" ]) "folder not found"
        }
    ]
