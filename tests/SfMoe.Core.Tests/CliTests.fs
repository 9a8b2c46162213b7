/// The command line as a user runs it: a separate process, its stdout, stderr and exit code.
module SfMoe.Core.Tests.CliTests

open System
open System.IO
open System.Diagnostics
open Expecto
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Tests.Support

/// The CLI built by the same configuration as these tests.
let cliDll =
    let config = if AppContext.BaseDirectory.Contains "/Release/" then "Release" else "Debug"
    Path.Combine(repoRoot, "src-fs", "SfMoe.Cli", "bin", config, "net10.0", "SfMoe.Cli.dll")

type Run = { Code: int; Out: string; Err: string }

let sfmoe (args: string list) : Run =
    if not (File.Exists cliDll) then failtestf "CLI not built: %s (build the solution first)" cliDll
    let psi = ProcessStartInfo("dotnet", RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    psi.ArgumentList.Add cliDll
    for a in args do psi.ArgumentList.Add a
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    // a hang guard, not a speed check: generous so that a loaded machine (the main job trains 3000 steps) does not fail it
    if not (p.WaitForExit 900_000) then
        p.Kill true
        failtestf "sfmoe %A timed out" args
    { Code = p.ExitCode; Out = out.Result; Err = err.Result }

let private expectUsageError (r: Run) (fragment: string) =
    Expect.equal r.Code 2 (sprintf "exit code 2 (stderr: %s)" r.Err)
    let lines = r.Err.Trim().Split('\n')
    Expect.equal lines.Length 1 (sprintf "one line on stderr: %s" r.Err)
    Expect.stringStarts lines[0] "sfmoe: error: " "prefix"
    Expect.stringContains lines[0] fragment "message"
    Expect.isFalse (r.Err.Contains "   at ") "no stack trace"

let private tempDir () = Directory.CreateTempSubdirectory("sfmoe-cli-").FullName

[<Tests>]
let tests =
    testList "cli" [
        test "pattern --json lists 12 blocks alternating S and F" {
            let r = sfmoe [ "pattern"; "[S,F]x6"; "--json" ]
            Expect.equal r.Code 0 r.Err
            Expect.equal (r.Out.Trim()) """{"pattern":"[S,F]x6","blocks":["S","F","S","F","S","F","S","F","S","F","S","F"]}""" "json"
        }
        test "bad patterns exit 2 naming the column" {
            expectUsageError (sfmoe [ "pattern"; "[S,F]x" ]) "pattern \"[S,F]x\" at column 6: expected a repeat count"
            expectUsageError (sfmoe [ "pattern"; "[S,F]x6"; "--depth"; "10" ]) "has 12 blocks but depth is 10"
        }
        test "unknown commands, options and models are one-line errors" {
            expectUsageError (sfmoe [ "frobnicate" ]) "unrecognized argument: 'frobnicate'"
            expectUsageError (sfmoe [ "summary"; "--model"; "vit_huge" ]) "unknown model vit_huge"
            expectUsageError (sfmoe [ "summary"; "--batch-size"; "0" ]) "--batch-size must be >= 1, got 0"
            expectUsageError (sfmoe [ "bench"; "moe"; "--capacity"; "-1" ]) "--capacity must be dropless or a number > 0, got -1"
        }
        test "pattern with a model prints parameters and MACs per block" {
            let r = sfmoe [ "pattern"; "sfmoe-dg"; "--model"; "sfmoe_small_patch16_224"; "--json" ]
            Expect.equal r.Code 0 r.Err
            use doc = Text.Json.JsonDocument.Parse r.Out
            let root = doc.RootElement
            Expect.equal (root.GetProperty("total_params").GetInt64()) 29_513_552L "total params (28,743,552 backbone + heads)"
            let parts = [ for p in root.GetProperty("parts").EnumerateArray() -> p.GetProperty("name").GetString(), p.GetProperty("kind").GetString() ]
            Expect.equal (parts |> List.filter (fun (_, k) -> k = "S") |> List.map fst) [ "blocks.5"; "blocks.11" ] "sparse blocks"
        }
        test "summary prints the layout and output shape" {
            let r = sfmoe [ "summary"; "--model"; "sfmoe_test_patch8_32"; "--batch-size"; "3" ]
            Expect.equal r.Code 0 r.Err
            Expect.stringContains r.Out "blocks.1  S " "sparse block listed"
            Expect.stringContains r.Out "-> logits [3, 10]" "output shape"
        }
        test "forward: loads weights by name, writes logits, aux loss and routing; bad files are clear errors" {
            let dir = tempDir ()
            try
                let cfg = Registry.tryCreate "sfmoe_test_patch8_32" |> Result.defaultWith failwith
                use m = new Vit.SfMoeVit({ cfg with Moe = { cfg.Moe with SecondPolicy = Config.SecondAll } }, Dd.cpu, Some 3L)
                let weights = Path.Combine(dir, "w.safetensors")
                writeSafeTensors weights Map.empty [ for KeyValue(k, v) in m.state_dict () -> k, v ]
                let input = Path.Combine(dir, "x.safetensors")
                use x = torch.randn(2L, 3L, 32L, 32L)
                writeSafeTensors input Map.empty [ "x", x ]
                let output = Path.Combine(dir, "out.safetensors")
                let r = sfmoe [ "forward"; "--model"; "sfmoe_test_patch8_32"; "--weights"; weights; "--input"; input; "--output"; output; "--second-policy"; "all" ]
                Expect.equal r.Code 0 r.Err
                use o = readSafeTensors output
                m.eval () |> ignore
                use expected = m.forward x
                expectClose 1e-6 "logits" o["logits"] expected
                // --precision bf16: float32 logits within bf16 tolerance of fp32's
                let out16 = Path.Combine(dir, "out16.safetensors")
                let r16 = sfmoe [ "forward"; "--model"; "sfmoe_test_patch8_32"; "--weights"; weights; "--input"; input; "--output"; out16; "--second-policy"; "all"; "--precision"; "bf16" ]
                Expect.equal r16.Code 0 r16.Err
                Expect.stringContains r16.Err "precision bf16" "says what bf16 means"
                use o16 = readSafeTensors out16
                Expect.equal o16["logits"].dtype torch.ScalarType.Float32 "float32 logits"
                Expect.isFalse (tensorsEqual o16["logits"] expected) "computed in bfloat16"
                Expect.isLessThan (relErr o16["logits"] expected) 0.05 "within bf16 tolerance"
                Expect.sequenceEqual (o.Tensors |> List.map fst |> List.filter (fun n -> n.StartsWith "routing.1.")) [ "routing.1.index_1"; "routing.1.kept_1"; "routing.1.gate_1"; "routing.1.index_2"; "routing.1.kept_2"; "routing.1.gate_2" ] "routing keys"
                Expect.sequenceEqual o["routing.3.index_1"].shape [| 2L; 18L |] "(B, N)"
                // strict loading: a missing key is named
                let partial = Path.Combine(dir, "partial.safetensors")
                writeSafeTensors partial Map.empty [ for KeyValue(k, v) in m.state_dict () do if k <> "blocks.1.mlp.gate.w_gating" then yield k, v ]
                expectUsageError (sfmoe [ "forward"; "--model"; "sfmoe_test_patch8_32"; "--weights"; partial; "--input"; input; "--output"; output ]) "missing keys: blocks.1.mlp.gate.w_gating"
                // a truncated weights file, an input without x, a bad input shape
                let truncated = Path.Combine(dir, "t.safetensors")
                File.WriteAllBytes(truncated, (File.ReadAllBytes weights)[0..200])
                expectUsageError (sfmoe [ "forward"; "--model"; "sfmoe_test_patch8_32"; "--weights"; truncated; "--input"; input; "--output"; output ]) truncated
                let noX = Path.Combine(dir, "nox.safetensors")
                writeSafeTensors noX Map.empty [ "y", x ]
                expectUsageError (sfmoe [ "forward"; "--model"; "sfmoe_test_patch8_32"; "--weights"; weights; "--input"; noX; "--output"; output ]) "no tensor named x (found: y)"
                let badX = Path.Combine(dir, "badx.safetensors")
                use x1 = torch.randn(2L, 1L, 32L, 32L)
                writeSafeTensors badX Map.empty [ "x", x1 ]
                expectUsageError (sfmoe [ "forward"; "--model"; "sfmoe_test_patch8_32"; "--weights"; weights; "--input"; badX; "--output"; output ]) "expected 3 channels (in_chans), got 1"
                // the earlier output is intact after the failures (written atomically, never half-written)
                use again = readSafeTensors output
                expectClose 1e-6 "logits still there" again["logits"] expected
                let cfgFile = Path.Combine(dir, "bad.json")
                File.WriteAllText(cfgFile, """{"model": "sfmoe_test_patch8_32", "moe": {"top_k": 3}}""")
                expectUsageError (sfmoe [ "forward"; "--model-config"; cfgFile; "--weights"; weights; "--input"; input; "--output"; output ]) (sprintf "model config %s: moe.top_k must be 1 or 2, got 3" cfgFile)
            finally
                Directory.Delete(dir, true)
        }
        test "the main job: train with no dataset learns the Synthetic dataset, held-out accuracy well above chance" {
            let dir = tempDir ()
            try
                let r = sfmoe [ "train"; "--output-dir"; IO.Path.Combine(dir, "run"); "--no-timings" ]
                Expect.equal r.Code 0 r.Err
                Expect.stringContains r.Out "0    cartoon   test" "the final table lists the held-out domain"
                let last = IO.File.ReadAllLines(IO.Path.Combine(dir, "run", "results.jsonl")) |> Array.last
                use doc = Text.Json.JsonDocument.Parse last
                let acc = doc.RootElement.GetProperty("env0_in_acc").GetDouble()
                Expect.equal (doc.RootElement.GetProperty("step").GetInt32()) 3000 "the default steps"
                Expect.isGreaterThan acc 0.25 (sprintf "held-out accuracy %.3f vs chance 1/7 = 0.143" acc)
                Expect.isTrue (IO.File.Exists(IO.Path.Combine(dir, "run", "done"))) "done"
            finally
                IO.Directory.Delete(dir, true)
        }

        test "--precision: an unknown value is a one-line error naming it, before anything runs" {
            let msg v = sprintf "--precision must be fp32, tf32 or bf16, got %s" v
            expectUsageError (sfmoe [ "train"; "--output-dir"; Path.Combine(Path.GetTempPath(), "sfmoe-never"); "--precision"; "fp16" ]) (msg "fp16")
            Expect.isFalse (Directory.Exists(Path.Combine(Path.GetTempPath(), "sfmoe-never"))) "no run folder made"
            expectUsageError (sfmoe [ "evaluate"; "--checkpoint"; "missing.safetensors"; "--precision"; "half" ]) (msg "half")
            expectUsageError (sfmoe [ "bench"; "step"; "--precision"; "fp8" ]) (msg "fp8")
            expectUsageError (sfmoe [ "bench"; "moe"; "--precision"; "int8" ]) (msg "int8")
            expectUsageError (sfmoe [ "bench"; "train"; "--precision"; "x" ]) (msg "x")
            expectUsageError (sfmoe [ "profile"; "--no-timing"; "--precision"; "y" ]) (msg "y")
            expectUsageError (sfmoe [ "forward"; "--model"; "sfmoe_test_patch8_32"; "--weights"; "w"; "--input"; "i"; "--output"; "o"; "--precision"; "z" ]) (msg "z")
            expectUsageError (sfmoe [ "bench"; "step"; "--peak-tflops"; "0" ]) "--peak-tflops must be a number > 0, got 0"
        }

        test "bench moe --precision tf32 says plainly that it changes nothing on the CPU" {
            let r = sfmoe [ "bench"; "moe"; "--dim"; "32"; "--hidden"; "64"; "--tokens"; "396"; "--repeats"; "1"; "--warmup"; "0"; "--precision"; "tf32"; "--json" ]
            Expect.equal r.Code 0 r.Err
            Expect.stringContains r.Err "precision tf32 changes nothing on cpu" "the note"
            use doc = Text.Json.JsonDocument.Parse r.Out
            Expect.equal (doc.RootElement.GetProperty("precision").GetString()) "tf32" "recorded"
            Expect.equal (doc.RootElement.GetProperty("device").GetString()) "cpu" "device"
        }

        test "bench step reports FLOPs from the pairs processed and an MFU against the CPU's matmul rate" {
            let r = sfmoe [ "bench"; "step"; "--model"; "sfmoe_test_patch8_32"; "--batch-size"; "4"; "--warmup"; "1"; "--repeats"; "2"; "--precision"; "bf16"; "--json" ]
            Expect.equal r.Code 0 r.Err
            use doc = Text.Json.JsonDocument.Parse r.Out
            let root = doc.RootElement
            let g (k: string) = root.GetProperty(k).GetDouble()
            Expect.equal (root.GetProperty("precision").GetString()) "bf16" "precision"
            let perToken = g "pairs_per_token"
            Expect.isTrue (perToken > 0.5 && perToken <= 2.0) (sprintf "pairs per token per sparse block %g within (0.5, top-k = 2]" perToken)
            let cfg = Registry.tryCreate "sfmoe_test_patch8_32" |> Result.defaultWith failwith
            let expected = SfMoe.Cli.Bench.Flops.step cfg 4 (g "pairs_per_step") / 1e9
            Expect.floatClose Accuracy.medium (g "step_gflop") expected "FLOPs from the pairs"
            Expect.floatClose Accuracy.medium (g "achieved_gflops") (g "step_gflop" / (g "step_ms" / 1000.0)) "achieved rate"
            Expect.stringContains (root.GetProperty("peak_source").GetString()) "measured float32" "CPU peak source"
            Expect.floatClose Accuracy.medium (g "mfu") (g "achieved_gflops" / (g "peak_tflops" * 1000.0)) "MFU = achieved / peak"
        }

        test "bench moe --json prints the timings and their ratio" {
            let r = sfmoe [ "bench"; "moe"; "--dim"; "32"; "--hidden"; "64"; "--tokens"; "396"; "--repeats"; "2"; "--warmup"; "1"; "--json" ]
            Expect.equal r.Code 0 r.Err
            use doc = Text.Json.JsonDocument.Parse r.Out
            let g (k: string) = doc.RootElement.GetProperty(k).GetDouble()
            Expect.isGreaterThan (g "moe_ms") 0.0 "moe_ms"
            Expect.isGreaterThan (g "dense_ms") 0.0 "dense_ms"
            Expect.floatClose Accuracy.medium (g "ratio") (g "moe_ms" / g "dense_ms") "ratio"
        }
    ]
