/// ONNX export: ONNX Runtime's logits and routing against TorchSharp's eval forward pass for dense, distilled, SF-MoE
/// (every deterministic policy, per-image capacity, dropless) and GMoE (cosine top-1, batch capacity, priority) ViTs
/// and both CNNs, on random inputs, inputs with exact ties and real MNIST digits; the ONNX checker on every file.
module SfMoe.Core.Tests.OnnxTests

open System
open System.Diagnostics
open System.IO
open Expecto
open TorchSharp
open Microsoft.ML.OnnxRuntime
open SfMoe
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Onnx
open SfMoe.Core.Tests.Support

/// What ONNX Runtime returned for one output.
type OrtOutput =
    { Shape: int64[]
      Floats: float32[]
      Longs: int64[]
      Bools: bool[] }

let export (o: OnnxExport.Options) (arch: Architecture) (net: Networks.Network) : byte[] =
    use ms = new MemoryStream()
    OnnxExport.write o arch net [ "backbone", Architecture.backbone arch ] ms
    ms.ToArray()

/// Run a model on images (B, C, H, W); every output by name.
let runOrt (model: byte[]) (x: torch.Tensor) : Map<string, OrtOutput> =
    use so = new SessionOptions(IntraOpNumThreads = 2)
    use session = new InferenceSession(model, so)
    use xc = x.contiguous ()
    let data = xc.data<float32>().ToArray()
    use input = OrtValue.CreateTensorValueFromMemory(data, x.shape)
    use ro = new RunOptions()
    let names = session.OutputNames |> Seq.toArray
    use outs = session.Run(ro, [| OnnxExport.inputName |], [| input |], names)
    Seq.zip names outs
    |> Seq.map (fun (n, v) ->
        let info = v.GetTensorTypeAndShape()
        let empty = { Shape = info.Shape; Floats = [||]; Longs = [||]; Bools = [||] }
        n,
        match info.ElementDataType with
        | Tensors.TensorElementType.Float -> { empty with Floats = v.GetTensorDataAsSpan<float32>().ToArray() }
        | Tensors.TensorElementType.Int64 -> { empty with Longs = v.GetTensorDataAsSpan<int64>().ToArray() }
        | Tensors.TensorElementType.Bool -> { empty with Bools = v.GetTensorDataAsSpan<bool>().ToArray() }
        | t -> failwithf "unexpected output type %O" t)
    |> Map.ofSeq

/// TorchSharp's eval forward pass: logits and routing records.
let reference (net: Networks.Network) (x: torch.Tensor) : torch.Tensor * (int * Moe.Record) list =
    net.SetTraining false
    use _ = torch.no_grad ()
    let o = Networks.forward net None true x
    o.Aux.Dispose()
    o.Logits, o.Routing

let private vit (name: string) (edit: VitConfig -> VitConfig) = VitArch(edit (ModelSpec.vitNamed name))
let private withMoe (f: MoeConfig -> MoeConfig) (c: VitConfig) = { c with Moe = f c.Moe }

/// Random normal images of the architecture's shape.
let randomImages (arch: Architecture) (seed: int64) (b: int) =
    use g = generator seed Dd.cpu
    let s = int64 (Architecture.imgSize arch)
    torch.randn([| int64 b; int64 (Architecture.inChans arch); s; s |], generator = g)

/// Images with exact ties: blank images, repeated images, and images constant over large areas.
let tiedImages (arch: Architecture) (b: int) =
    let s = int64 (Architecture.imgSize arch)
    let c = int64 (Architecture.inChans arch)
    use g = generator 7L Dd.cpu
    use one = torch.randn([| 1L; c; s; s |], generator = g)
    let imgs =
        [| for i in 0 .. b - 1 ->
               match i % 3 with
               | 0 -> torch.zeros([| 1L; c; s; s |])
               | 1 -> one.clone ()
               | _ ->
                   let t = torch.zeros([| 1L; c; s; s |])
                   use half = t.narrow(2L, 0L, s / 2L)
                   half.fill_(Scalars.constant (float i * 0.25)) |> ignore
                   t |]
    let x = torch.cat(imgs, 0L)
    for t in imgs do t.Dispose()
    x

/// MNIST test digits from SFMOE_DATA_DIR (MNIST/raw/t10k-images-idx3-ubyte) as (B, C, size, size) in [0, 1],
/// zero-padded to the size and repeated over channels; None without the data.
let mnistImages (arch: Architecture) (b: int) : torch.Tensor option =
    let dir = Environment.GetEnvironmentVariable "SFMOE_DATA_DIR"
    let path = if isNull dir then "" else Path.Combine(dir, "MNIST", "raw", "t10k-images-idx3-ubyte")
    if not (File.Exists path) then None
    else
        let bytes = File.ReadAllBytes path
        let s = int64 (Architecture.imgSize arch)
        let c = int64 (Architecture.inChans arch)
        let pixels = Array.init (b * 28 * 28) (fun i -> float32 bytes[16 + i] / 255.0f)
        use digits = torch.tensor(pixels, ReadOnlySpan<int64>([| int64 b; 1L; 28L; 28L |]))
        let pad = max 0L (s - 28L)
        use padded = torch.nn.functional.pad(digits, [| pad / 2L; pad - pad / 2L; pad / 2L; pad - pad / 2L |])
        use cropped = padded.narrow(2L, 0L, s).narrow(3L, 0L, s)
        Some(cropped.expand(-1L, c, -1L, -1L).contiguous ())

/// ONNX Runtime's logits within `tol` relative (to the largest reference logit) of TorchSharp's, and the same
/// routing (chosen experts and kept choices of every sparse block).
/// Returns the number of dropped (not dispatched or over capacity) choices.
let expectParity (tol: float) (what: string) (model: byte[]) (net: Networks.Network) (x: torch.Tensor) : int =
    let ort = runOrt model x
    let logits, routing = reference net x
    use logits = logits
    let o = ort[OnnxExport.outputName]
    Expect.sequenceEqual o.Shape logits.shape (what + ": logits shape")
    use actual = torch.tensor(o.Floats, ReadOnlySpan<int64>(o.Shape))
    expectClose tol (what + ": logits") actual logits
    if Environment.GetEnvironmentVariable "SFMOE_ONNX_REPORT" = "1" then printfn "PARITY %s: %.3g" what (relErr actual logits)
    let mutable dropped = 0
    for i, r in routing do
        use r = r
        match Map.tryFind (sprintf "routing.%d.index" i) ort, Map.tryFind (sprintf "routing.%d.kept" i) ort with
        | Some idx, Some kept ->
            Expect.sequenceEqual idx.Longs (r.Index.contiguous().data<int64>().ToArray()) (sprintf "%s: block %d experts" what i)
            Expect.sequenceEqual kept.Bools (r.Kept.contiguous().data<bool>().ToArray()) (sprintf "%s: block %d kept choices" what i)
            dropped <- dropped + (kept.Bools |> Array.filter not |> Array.length)
        | _ -> failwithf "%s: the export has no routing outputs for block %d" what i
    dropped

/// Build, export with routing outputs, and compare on several inputs; `drops`: some choice must be dropped (the
/// capacity or policy under test acts).
let parityCaseWith (drops: bool) (name: string) (arch: Architecture) (o: OnnxExport.Options) (inputs: (string * (unit -> torch.Tensor option)) list) =
    test name {
        let net = Networks.build arch Dd.cpu 3L 0.0
        use _ = net.Module
        let model = export { o with RoutingOutputs = true } arch net
        let mutable dropped = 0
        for what, make in inputs do
            match make () with
            | Some x ->
                use x = x
                dropped <- dropped + expectParity 1e-4 (sprintf "%s, %s" name what) model net x
            | None -> ()
        if drops then Expect.isGreaterThan dropped 0 (name + ": no choice was dropped; the case tests nothing")
    }

let parityCase = parityCaseWith false

let private standardInputs (arch: Architecture) (batches: int list) =
    [ for b in batches do
          yield sprintf "random batch %d" b, (fun () -> Some(randomImages arch (int64 b) b))
      yield "tied inputs", (fun () -> Some(tiedImages arch (List.max batches)))
      yield "MNIST digits", (fun () -> mnistImages arch (List.max batches)) ]

let private dyn = OnnxExport.defaults

/// The ONNX checker of Debian's python3-onnx (opset <= 17), or None where it is missing.
let private checker =
    lazy
        (let py = "/usr/bin/python3"
         if not (File.Exists py) then None
         else
             let psi = ProcessStartInfo(py, [| "-c"; "import onnx" |], RedirectStandardError = true)
             use p = Process.Start psi
             p.WaitForExit()
             if p.ExitCode = 0 then Some py else None)

/// Run the ONNX checker (with shape inference) on files; one line per file: "ok PATH" or "FAIL PATH: error".
let checkModels (paths: string list) : string list =
    match checker.Force() with
    | None -> failwith "python3-onnx is not installed"
    | Some py ->
        let script =
            "import onnx, sys\n"
            + "for p in sys.argv[1:]:\n"
            + "    try:\n"
            + "        onnx.checker.check_model(onnx.load(p), full_check=True); print('ok', p)\n"
            + "    except Exception as e:\n"
            + "        print('FAIL', p + ':', str(e).replace(chr(10), ' '))\n"
        let psi = ProcessStartInfo(py, RedirectStandardError = true, RedirectStandardOutput = true)
        psi.ArgumentList.Add "-c"
        psi.ArgumentList.Add script
        for p in paths do psi.ArgumentList.Add p
        use p = Process.Start psi
        let out = p.StandardOutput.ReadToEnd()
        let err = p.StandardError.ReadToEnd()
        p.WaitForExit()
        if p.ExitCode <> 0 then failwithf "the checker failed: %s" err
        out.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> List.ofArray

let private sfmoe = "sfmoe_test_patch8_32"
let private gmoe = "gmoe_test_patch8_32"

let private perImagePolicies =
    [ "all", SecondAll; "none", SecondNone; "threshold 0.2", SecondThreshold 0.2; "threshold 0.45", SecondThreshold 0.45 ]

/// The message of the exception of type 'E that f throws.
let throwsMessage<'E when 'E :> exn> (f: unit -> unit) : string =
    try
        f ()
        failtestf "expected %s, nothing was thrown" typeof<'E>.Name
    with
    | :? 'E as e -> e.Message

/// Every kind of export the tests cover, for the checker.
let private exportsToCheck () : (string * Architecture * OnnxExport.Options) list =
    let hybrid = ModelSpec.resolve { ModelSpec.named "hybrid_sfmoe_small_r26_s32_224" with ImgSize = Some 64; NumClasses = Some 5 }
    [ yield "vit", vit "vit_test_patch8_32" id, dyn
      yield "deit-distilled", vit "deit_test_distilled_patch8_32" id, { dyn with Batch = Some 2 }
      for pname, policy in ("random", SecondRandom 0.2) :: perImagePolicies do
          yield sprintf "sfmoe-%s" (pname.Replace(' ', '-')), vit sfmoe (withMoe (fun m -> { m with SecondPolicy = policy })), { dyn with RoutingOutputs = true }
      yield "sfmoe-dropless-priority", vit sfmoe (withMoe (fun m -> { m with CapacityEval = Dropless; BatchPrioritized = true })), dyn
      yield "gmoe-dynamic", vit gmoe id, { dyn with RoutingOutputs = true }
      yield "gmoe-batch3", vit gmoe id, { dyn with Batch = Some 3 }
      yield "gmoe-top2", vit gmoe (withMoe (fun m -> { m with TopK = 2; SecondPolicy = SecondThreshold 0.3 })), dyn
      yield "hybrid-sfmoe", hybrid, dyn
      yield "mnist-cnn", CnnArch { Kind = MnistCnn; InChans = 2; NumClasses = 2; ImgSize = 28 }, dyn
      yield "resnet50", ModelSpec.resolve { ModelSpec.named "resnet50" with NumClasses = Some 7 }, dyn ]

[<Tests>]
let tests =
    testList "onnx" [
        testList "parity" [
            let a = vit "vit_test_patch8_32" id
            parityCase "dense ViT" a dyn (standardInputs a [ 1; 3 ])
            let a = vit "deit_test_distilled_patch8_32" id
            parityCase "distilled ViT" a dyn (standardInputs a [ 2 ])
            for pname, policy in perImagePolicies do
                // cf 1.0 at 17 tokens and 4 experts: capacity 4 per image, so choices are dropped.
                for cf in [ 1.0; 2.0 ] do
                    let a = vit sfmoe (withMoe (fun m -> { m with SecondPolicy = policy; CapacityEval = Factor cf }))
                    parityCaseWith (cf < 2.0 || policy <> SecondAll) (sprintf "SF-MoE top-2 %s, per-image capacity factor %g" pname cf) a dyn (standardInputs a [ 1; 4 ])
            let a = vit sfmoe (withMoe (fun m -> { m with SecondPolicy = SecondThreshold 0.2; CapacityEval = Dropless }))
            parityCase "SF-MoE top-2 threshold, dropless" a dyn (standardInputs a [ 3 ])
            let a = vit sfmoe (withMoe (fun m -> { m with SecondPolicy = SecondAll; Scope = PerImage 0; CapacityEval = Factor 0.5; BatchPrioritized = true }))
            parityCaseWith true "SF-MoE top-2 all, per-image priority, capacity 2" a dyn (standardInputs a [ 3 ])
            let a = vit gmoe id
            parityCase "GMoE cosine top-1, batch capacity, priority (dynamic batch)" a dyn (standardInputs a [ 1; 2; 5 ])
            parityCase "GMoE cosine top-1, batch capacity, priority (batch 4)" a { dyn with Batch = Some 4 } (standardInputs a [ 4 ])
            let a = vit gmoe (withMoe (fun m -> { m with CapacityEval = Factor 0.5 }))
            parityCaseWith true "GMoE cosine top-1, batch capacity factor 0.5" a dyn (standardInputs a [ 3 ])
            let a = vit gmoe (withMoe (fun m -> { m with TopK = 2; SecondPolicy = SecondThreshold 0.3; CapacityEval = Factor 1.0 }))
            parityCaseWith true "GMoE cosine top-2 threshold, batch capacity (dynamic batch)" a dyn (standardInputs a [ 2; 5 ])
            test "experts that get no token (one blank image) run on empty slices" {
                for name in [ gmoe; sfmoe ] do
                    let a = vit name (withMoe (fun m -> { m with SecondPolicy = SecondThreshold 0.2 }))
                    let net = Networks.build a Dd.cpu 3L 0.0
                    use _ = net.Module
                    let model = export { dyn with RoutingOutputs = true } a net
                    use x = torch.zeros([| 1L; 3L; 32L; 32L |])
                    expectParity 1e-4 (name + ", blank image") model net x |> ignore
                    let ort = runOrt model x
                    let e = match a with VitArch c -> c.Moe.NumExperts | CnnArch _ -> 0
                    let idle =
                        [ for KeyValue(k, v) in ort do
                              if k.EndsWith ".index" then
                                  let kept = ort[k.Replace(".index", ".kept")].Bools
                                  let used = Seq.zip v.Longs kept |> Seq.filter snd |> Seq.map fst |> Set.ofSeq
                                  yield e - used.Count ]
                    Expect.exists idle (fun n -> n > 0) (name + ": some expert of some block gets no token (the case tests nothing otherwise)")
            }
            test "the random policy served as threshold equals a threshold model" {
                let a = vit sfmoe (withMoe (fun m -> { m with SecondPolicy = SecondRandom 0.3 }))
                let t = vit sfmoe (withMoe (fun m -> { m with SecondPolicy = SecondThreshold 0.3 }))
                let net = Networks.build a Dd.cpu 3L 0.0
                use _ = net.Module
                let twin = Networks.build t Dd.cpu 3L 0.0
                use _ = twin.Module
                let model = export { dyn with RandomAsThreshold = true; RoutingOutputs = true } a net
                use x = randomImages a 5L 4
                expectParity 1e-4 "random as threshold" model twin x |> ignore
            }
            test "the random policy with threshold 0 dispatches every second choice" {
                let a = vit sfmoe (withMoe (fun m -> { m with SecondPolicy = SecondRandom 0.0 }))
                let all = vit sfmoe (withMoe (fun m -> { m with SecondPolicy = SecondAll }))
                let net = Networks.build a Dd.cpu 3L 0.0
                use _ = net.Module
                let twin = Networks.build all Dd.cpu 3L 0.0
                use _ = twin.Module
                use x = randomImages a 6L 3
                expectParity 1e-4 "random policy, threshold 0" (export { dyn with RoutingOutputs = true } a net) twin x |> ignore
            }
            test "the random policy dispatches second choices with probability gate2 / threshold" {
                let t = 0.5
                let a = vit sfmoe (withMoe (fun m -> { m with SecondPolicy = SecondRandom t; CapacityEval = Dropless }))
                let net = Networks.build a Dd.cpu 3L 0.0
                use _ = net.Module
                let model = export { dyn with RoutingOutputs = true } a net
                use x = randomImages a 8L 48
                let ort = runOrt model x
                let _, routing = reference net x
                let mutable expected, variance, observed = 0.0, 0.0, 0
                // Only the first sparse block sees the same input in both: later blocks depend on the draws.
                for i, r in routing |> List.truncate 1 do
                    let idx = ort[sprintf "routing.%d.index" i]
                    Expect.sequenceEqual idx.Longs (r.Index.contiguous().data<int64>().ToArray()) "the choices are deterministic"
                    let gates = r.Gate.contiguous().data<float32>().ToArray()
                    let kept = ort[sprintf "routing.%d.kept" i].Bools
                    for j in 0 .. gates.Length / 2 - 1 do
                        Expect.isTrue kept[2 * j] "first choices are kept (dropless)"
                        let p = min 1.0 (float gates[2 * j + 1] / t)
                        expected <- expected + p
                        variance <- variance + p * (1.0 - p)
                        if kept[2 * j + 1] then observed <- observed + 1
                for _, r in routing do (r :> IDisposable).Dispose()
                Expect.isLessThan (abs (float observed - expected)) (5.0 * sqrt variance + 1.0)
                    (sprintf "%d second choices dispatched, %.1f expected (sd %.1f)" observed expected (sqrt variance))
                Expect.isLessThan (float observed) (expected * 2.0) "far fewer than all are dispatched"
            }
            let a = CnnArch { Kind = MnistCnn; InChans = 2; NumClasses = 2; ImgSize = 28 }
            parityCase "MNIST_CNN" a dyn (standardInputs a [ 1; 4 ])
            let a = ModelSpec.resolve { ModelSpec.named "hybrid_sfmoe_small_r26_s32_224" with ImgSize = Some 64; NumClasses = Some 5 }
            parityCase "hybrid SF-MoE (ResNetV2 stem) at 64x64" a dyn [ "random batch 2", (fun () -> Some(randomImages a 2L 2)) ]
            let a = ModelSpec.resolve { ModelSpec.named "resnet50" with NumClasses = Some 7 }
            parityCase "ResNet-50" a dyn [ "random batch 2", (fun () -> Some(randomImages a 2L 2)) ]
            for opset in [ 18; 21 ] do
                let a = vit gmoe (withMoe (fun m -> { m with TopK = 2; SecondPolicy = SecondThreshold 0.3 }))
                parityCase (sprintf "GMoE top-2 at opset %d" opset) a { dyn with Opset = opset } (standardInputs a [ 3 ])
                let a = CnnArch { Kind = MnistCnn; InChans = 1; NumClasses = 10; ImgSize = 28 }
                parityCase (sprintf "MNIST_CNN at opset %d" opset) a { dyn with Opset = opset } (standardInputs a [ 2 ])
        ]
        test "the ONNX checker accepts every kind of export" {
            match checker.Force() with
            | None -> skiptest "python3-onnx is not installed (Debian: apt-get install python3-onnx)"
            | Some _ ->
                let dir = Directory.CreateTempSubdirectory("sfmoe-onnx-check-").FullName
                try
                    let paths =
                        [ for name, arch, o in exportsToCheck () ->
                              let net = Networks.build arch Dd.cpu 1L 0.0
                              use _ = net.Module
                              let path = Path.Combine(dir, name + ".onnx")
                              File.WriteAllBytes(path, export o arch net)
                              path ]
                    let lines = checkModels paths
                    let failed = lines |> List.filter (fun l -> not (l.StartsWith "ok "))
                    Expect.isEmpty failed "checker errors"
                    Expect.equal lines.Length paths.Length "one verdict per file"
                finally
                    Directory.Delete(dir, true)
        }
        test "slow: full-size sfmoe_small_patch16_224 (DeiT-S SF-MoE, 22M parameters) exports, passes the checker and matches" {
            let a = vit "sfmoe_small_patch16_224" (withMoe (fun m -> { m with SecondPolicy = SecondThreshold 0.2 }))
            let net = Networks.build a Dd.cpu 11L 0.0
            use _ = net.Module
            let model = export { dyn with RoutingOutputs = true } a net
            use x = randomImages a 12L 2
            expectParity 1e-4 "sfmoe_small_patch16_224" model net x |> ignore
            match checker.Force() with
            | Some _ ->
                let path = Path.Combine(Path.GetTempPath(), sprintf "sfmoe-slow-%s.onnx" (Guid.NewGuid().ToString "N"))
                try
                    File.WriteAllBytes(path, model)
                    let lines = checkModels [ path ]
                    Expect.isTrue (lines.Length = 1 && lines.Head.StartsWith "ok ") (String.concat "\n" lines)
                finally
                    File.Delete path
            | None -> ()
        }
        testList "cli" [
            // One small trained model file (GMoE: deterministic in eval) shared by the CLI tests.
            let trained =
                lazy
                    (let dir = Directory.CreateTempSubdirectory("sfmoe-onnx-cli-").FullName
                     let r = CliTests.sfmoe [ "train"; "--algorithm"; "GMoE"; "--model"; "gmoe_test_patch8_32"; "--steps"; "2"; "--synthetic-size"; "40"
                                              "--output-dir"; Path.Combine(dir, "run"); "--no-timings"; "--quiet" ]
                     if r.Code <> 0 then failtestf "train failed: %s" r.Err
                     let img = Path.Combine(dir, "a.png")
                     // A 37x53 RGB PNG from the image fixtures.
                     File.Copy(fixture (Path.Combine("images", "bilevel_37x53.png")), img)
                     dir, Path.Combine(dir, "run", "model.safetensors"), img)
            test "export --format onnx, then predict --onnx prints what predict --checkpoint prints" {
                let dir, model, img = trained.Force()
                let onnx = Path.Combine(dir, "m.onnx")
                let r = CliTests.sfmoe [ "export"; "--format"; "onnx"; "--checkpoint"; model; "-o"; onnx; "--batch"; "dynamic"; "--opset"; "17" ]
                Expect.equal r.Code 0 r.Err
                Expect.stringContains r.Out "opset 17, batch dynamic" "report"
                let viaOnnx = CliTests.sfmoe [ "predict"; "--onnx"; onnx; img; "--top"; "3"; "--json" ]
                let viaTorch = CliTests.sfmoe [ "predict"; "--checkpoint"; model; img; "--top"; "3"; "--json" ]
                Expect.equal viaOnnx.Code 0 viaOnnx.Err
                use a = Text.Json.JsonDocument.Parse viaOnnx.Out
                use b = Text.Json.JsonDocument.Parse viaTorch.Out
                let preds (d: Text.Json.JsonDocument) =
                    [ for p in d.RootElement[0].GetProperty("predictions").EnumerateArray() -> p.GetProperty("class").GetString(), p.GetProperty("probability").GetDouble() ]
                for (ca, pa), (cb, pb) in List.zip (preds a) (preds b) do
                    Expect.equal ca cb "same classes"
                    Expect.floatClose { absolute = 1e-6; relative = 1e-4 } pa pb "same probabilities"
            }
            test "predict --onnx and export --format onnx: bad files and flags are one-line errors" {
                let dir, model, img = trained.Force()
                let expectError (r: CliTests.Run) (fragment: string) =
                    Expect.equal r.Code 2 (sprintf "exit code 2: %s" r.Err)
                    Expect.stringContains r.Err fragment "message"
                    Expect.isFalse (r.Err.Contains "   at ") "no stack trace"
                expectError (CliTests.sfmoe [ "predict"; "--onnx"; model; img ]) "not an ONNX model"
                expectError (CliTests.sfmoe [ "predict"; "--onnx"; Path.Combine(dir, "none.onnx"); img ]) "none.onnx: file not found"
                expectError (CliTests.sfmoe [ "predict"; img ]) "give --checkpoint or --onnx"
                expectError (CliTests.sfmoe [ "export"; "--format"; "onnx"; "--checkpoint"; model; "-o"; Path.Combine(dir, "x.onnx"); "--batch"; "zero" ]) "--batch must be dynamic or a batch size"
                expectError (CliTests.sfmoe [ "export"; "--format"; "onnx"; "--checkpoint"; model; "-o"; Path.Combine(dir, "x.onnx"); "--opset"; "30" ]) "opset 30"
                expectError (CliTests.sfmoe [ "export"; "--format"; "timm"; "--checkpoint"; model; "-o"; Path.Combine(dir, "x.st"); "--batch"; "4" ]) "--batch applies to --format onnx only"
            }
            test "bench predict --json: ONNX Runtime and TorchSharp side by side, with their agreement" {
                let dir, model, _ = trained.Force()
                let onnx = Path.Combine(dir, "b.onnx")
                Expect.equal (CliTests.sfmoe [ "export"; "--format"; "onnx"; "--checkpoint"; model; "-o"; onnx ]).Code 0 "export"
                let r = CliTests.sfmoe [ "bench"; "predict"; "--onnx"; onnx; "--checkpoint"; model; "--batch-sizes"; "1,3"; "--repeats"; "2"; "--warmup"; "1"; "--json" ]
                Expect.equal r.Code 0 r.Err
                use d = Text.Json.JsonDocument.Parse r.Out
                let rows = [ for x in d.RootElement.EnumerateArray() -> x ]
                Expect.equal [ for x in rows -> x.GetProperty("batch").GetInt32() ] [ 1; 3 ] "one row per batch size"
                for x in rows do
                    let o, t = x.GetProperty("onnx_ms").GetDouble(), x.GetProperty("torchsharp_ms").GetDouble()
                    Expect.floatClose Accuracy.high (x.GetProperty("ratio").GetDouble()) (t / o) "ratio = torchsharp time / onnx time"
                    Expect.isLessThan (x.GetProperty("max_rel_diff").GetDouble()) 1e-4 "the two agree"
            }
        ]
        testList "errors" [
            let a = vit sfmoe id
            for opset in [ 16; 22 ] do
                test (sprintf "opset %d is refused, naming the supported range" opset) {
                    let net = Networks.build a Dd.cpu 1L 0.0
                    use _ = net.Module
                    let msg = throwsMessage<ConfigException> (fun () -> export { dyn with Opset = opset } a net |> ignore)
                    Expect.stringContains msg (sprintf "opset %d" opset) "names the opset"
                    Expect.stringContains msg "17 to 21" "names the range"
                }
            test "a grouped or dilated convolution is refused, naming the block and the setting" {
                for groups, dilation, setting in [ 2L, 1L, "groups 2 and dilation 1x1"; 1L, 2L, "groups 1 and dilation 2x2" ] do
                    use conv = torch.nn.Conv2d(4L, 4L, 3L, dilation = dilation, groups = groups)
                    let g = Graph.Graph(17)
                    let x = g.Input("x", Proto.DataType.float32, [ Proto.Known 1L; Proto.Known 4L; Proto.Known 8L; Proto.Known 8L ])
                    let msg = throwsMessage<CheckpointException> (fun () -> Layers.conv g "patch_embed.backbone.stem.conv" conv x |> ignore)
                    Expect.stringStarts msg "patch_embed.backbone.stem.conv: " "names the block"
                    Expect.stringContains msg setting "names the setting"
                    Expect.stringContains msg "no ONNX export" "says why"
            }
            test "a batch size of 0 is refused" {
                let net = Networks.build a Dd.cpu 1L 0.0
                use _ = net.Module
                let msg = throwsMessage<ConfigException> (fun () -> export { dyn with Batch = Some 0 } a net |> ignore)
                Expect.stringContains msg "batch size" "names the setting"
            }
        ]
        test "metadata: the caller's keys, the format, and whether the graph is stochastic" {
            let meta (policy: SecondPolicy) (asThreshold: bool) =
                let a = vit sfmoe (withMoe (fun m -> { m with SecondPolicy = policy }))
                let net = Networks.build a Dd.cpu 1L 0.0
                use _ = net.Module
                use so = new SessionOptions()
                use s = new InferenceSession(export { dyn with RandomAsThreshold = asThreshold } a net, so)
                s.ModelMetadata.CustomMetadataMap
            let m = meta (SecondRandom 0.2) false
            Expect.equal m["format"] OnnxExport.format "format"
            Expect.equal m["backbone"] "vit" "the caller's key"
            Expect.equal m["stochastic"] "true" "random policy"
            let served = meta (SecondRandom 0.2) true
            Expect.equal served["stochastic"] "false" "served as threshold"
            let threshold = meta (SecondThreshold 0.2) false
            Expect.equal threshold["stochastic"] "false" "threshold policy"
        }
    ]
