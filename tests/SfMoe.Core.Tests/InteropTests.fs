/// Pretrained weights: the safe pickle reader, torch.save / .npz containers, every import format against the
/// fixtures of gen_interop_fixtures.py (independent PyTorch references), upcycling, and the two full-size cases.
module SfMoe.Core.Tests.InteropTests

open System
open System.IO
open System.Numerics
open System.Text.Json
open Expecto
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Pickle
open SfMoe.Core.Tests.Support

let interop (rel: string) = fixture (Path.Combine("interop", rel))

/// The model config of an expected-outputs file (SfMoe's config JSON; extra keys are ignored).
let configOf (c: SafeTensors.Contents) : VitConfig = ConfigJson.parse Registry.tryCreate c.Metadata["config"]

let private vitNet (cfg: VitConfig) (seed: int64) = Networks.VitNet(new Vit.SfMoeVit(cfg, Dd.cpu, Some seed))

let private vitOf (net: Networks.Network) =
    match net with
    | Networks.VitNet v -> v
    | _ -> failwith "not a ViT"

/// Import a fixture into a network built from `cfg`, in eval mode.
let private importInto (format: ImportSource.Format) (path: string) (cfg: VitConfig) (experts: Upcycle.ExpertInit option) =
    use src = readImport format path
    let net = vitNet cfg 7L
    let report = ImportLoad.loadInto net src experts
    net.Module.eval () |> ignore
    net, report

let private logitsOf (net: Networks.Network) (x: Tensor) =
    use _ = torch.no_grad ()
    (vitOf net).forward x

let private expectRefused (fragment: string) (f: unit -> unit) =
    let e = Expect.throwsC f id
    Expect.stringContains e.Message fragment "message"

/// A pickle from opcodes (bytes).
let private pk (parts: obj list) =
    [| for p in parts do
           match p with
           | :? byte as b -> yield b
           | :? string as s -> yield! Text.Encoding.Latin1.GetBytes s
           | :? (byte[]) as bs -> yield! bs
           | _ -> failwith "part" |]

let private noPid (_: PyValue) : PyValue = failwith "no persistent ids"

let private sentinel = "/tmp/sfmoe-interop-pwned"

/// A read-only stream that cannot seek (a network or pipe stream), over another stream.
type private NonSeekable(inner: Stream) =
    inherit Stream()
    override _.CanRead = true
    override _.CanSeek = false
    override _.CanWrite = false
    override _.Length = raise (NotSupportedException())
    override _.Position
        with get () = raise (NotSupportedException())
        and set _ = raise (NotSupportedException())
    override _.Flush() = ()
    override _.Read(buffer: byte[], offset: int, count: int) = inner.Read(buffer, offset, count)
    override _.Seek(_: int64, _: SeekOrigin) : int64 = raise (NotSupportedException())
    override _.SetLength(_: int64) = raise (NotSupportedException())
    override _.Write(_: byte[], _: int, _: int) = raise (NotSupportedException())

/// The tensors of a source, for comparison.
let private sameTensors (what: string) (a: (string * Tensor) list) (b: (string * Tensor) list) =
    Expect.sequenceEqual (a |> List.map fst) (b |> List.map fst) (what + ": names in order")
    for (n, x), (_, y) in List.zip a b do
        Expect.isTrue (tensorsEqual x y) (sprintf "%s: %s" what n)

/// Every cut of `bytes` at `cuts` read by `read` from a memory stream is a CheckpointException whose message starts
/// with the name given to the reader (the unpickler's messages name the file without its folder).
let private expectCutsRefused (name: string) (bytes: byte[]) (cuts: int list) (read: string -> Stream -> unit) =
    for cut in cuts do
        use ms = new MemoryStream(bytes[0 .. min (bytes.Length - 1) cut - 1])
        let e = Expect.throwsC (fun () -> read name ms) id
        Expect.isTrue (e :? SfMoe.CheckpointException) (sprintf "cut at %d: a CheckpointException (%s)" cut (e.GetType().Name))
        let named = e.Message.StartsWith(name + ": ") || e.Message.StartsWith(Path.GetFileName name + ": ")
        Expect.isTrue named (sprintf "cut at %d: names %s (%s)" cut name e.Message)

// ------------------------------------------------------------------------------------------------------------------
// The full-size cases: weights from the recipe documented in gen_interop_fixtures.py
// ------------------------------------------------------------------------------------------------------------------

let private fnv1a64 (s: string) =
    let mutable h = 0xCBF29CE484222325UL
    for b in Text.Encoding.UTF8.GetBytes s do
        h <- (h ^^^ uint64 b) * 0x100000001B3UL
    h

/// SplitMix64 values of the recipe: float32(offset + v * 2^-k), v = ((z >> 40) - 2^23) / 2^23.
let recipeValues (name: string) (n: int64) (offset: float) (k: int) : float32[] =
    let seed = fnv1a64 name ^^^ 0x5F3759DF00C0FFEEUL
    let scale = Math.Pow(2.0, float -k)
    Array.init (int n) (fun i ->
        let mutable z = seed + uint64 (i + 1) * 0x9E3779B97F4A7C15UL
        z <- (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
        z <- (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
        z <- z ^^^ (z >>> 31)
        let v = float (int64 (z >>> 40) - (1L <<< 23)) / float (1 <<< 23)
        float32 (offset + v * scale))

/// The tensors of a recipe, checked against the generator's checksums.
let recipeTensors (meta: Map<string, string>) : (string * Tensor) list =
    use recipe = JsonDocument.Parse meta["recipe"]
    use sums = JsonDocument.Parse meta["checksums"]
    [ for e in recipe.RootElement.EnumerateArray() do
          let name = e[0].GetString()
          let shape = [| for d in e[1].EnumerateArray() -> d.GetInt64() |]
          let n = Array.fold (*) 1L shape
          let t =
              if e[2].GetString() = "int64" then torch.zeros(shape, dtype = torch.ScalarType.Int64)
              else torch.tensor(recipeValues name n (e[3].GetDouble()) (e[4].GetInt32()), ReadOnlySpan<int64>(shape))
          let s = sums.RootElement.GetProperty name
          use t64 = t.to_type(torch.ScalarType.Float64)
          let sum = (t64.sum()).item<float> ()
          let sq = (t64 * t64).sum().item<float> ()
          if abs (sum - s[0].GetDouble()) > 1e-9 * max 1.0 (abs sum) || abs (sq - s[1].GetDouble()) > 1e-9 * max 1.0 sq then
              failtestf "recipe tensor %s differs from the generator's (sum %g vs %g)" name sum (s[0].GetDouble())
          yield name, t ]

let recipeInput (meta: Map<string, string>) : Tensor =
    use e = JsonDocument.Parse meta["input"]
    let r = e.RootElement
    let shape = [| for d in r[1].EnumerateArray() -> d.GetInt64() |]
    torch.tensor(recipeValues (r[0].GetString()) (Array.fold (*) 1L shape) (r[2].GetDouble()) (r[3].GetInt32()), ReadOnlySpan<int64>(shape))


/// Debian's python3-torch, if this machine has it (the generator's verify-export needs it; .ci/run installs it).
let private pythonTorch =
    lazy
        (try
            let psi = Diagnostics.ProcessStartInfo("/usr/bin/python3", "-c \"import torch, numpy\"", RedirectStandardError = true, RedirectStandardOutput = true)
            use p = Diagnostics.Process.Start psi
            p.WaitForExit 120_000 && p.ExitCode = 0
         with _ -> false)

let private runPython (args: string list) : int * string =
    let psi = Diagnostics.ProcessStartInfo("/usr/bin/python3", RedirectStandardError = true, RedirectStandardOutput = true)
    psi.ArgumentList.Add(Path.Combine(repoRoot, "tests", "fixtures", "gen_interop_fixtures.py"))
    for a in args do psi.ArgumentList.Add a
    use p = Diagnostics.Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit 300_000 |> ignore
    p.ExitCode, out.Result + err.Result

[<Tests>]
let tests =
    testList "interop" [
        testList "pickle" [
            test "reads the values torch.save and DomainBed write (protocol 2)" {
                // {'a': [1, -2, 3.5, 'x', None, True], 'b': (), 'big': 2**70, 'n': -300}
                let data =
                    pk [ 0x80uy; 2uy; 0x7duy; 0x28uy
                         0x58uy; [| 1uy; 0uy; 0uy; 0uy |]; "a"; 0x5duy; 0x28uy; 0x4buy; 1uy; 0x4auy; BitConverter.GetBytes(-2)
                         0x47uy; Array.rev (BitConverter.GetBytes 3.5); 0x8cuy; 1uy; "x"; 0x4euy; 0x88uy; 0x65uy
                         0x8cuy; 1uy; "b"; 0x29uy
                         0x8cuy; 3uy; "big"; 0x8auy; 9uy; BigInteger.Pow(BigInteger 2, 70).ToByteArray()
                         0x8cuy; 1uy; "n"; 0x4auy; BitConverter.GetBytes(-300)
                         0x75uy; 0x2euy ]
                let v, pos = Pickle.load "t.pkl" data 0 noPid
                Expect.equal pos data.Length "read to STOP"
                match v with
                | PyDict d ->
                    match d.TryFind "a" with
                    | Some(PyList l) -> Expect.equal (List.ofSeq l) [ PyInt(BigInteger 1); PyInt(BigInteger -2); PyFloat 3.5; PyStr "x"; PyNone; PyBool true ] "list"
                    | _ -> failtest "a"
                    Expect.equal (d.TryFind "b") (Some(PyTuple [||])) "tuple"
                    Expect.equal (d.TryFind "big") (Some(PyInt(BigInteger.Pow(BigInteger 2, 70)))) "LONG1"
                    Expect.equal (d.TryFind "n") (Some(PyInt(BigInteger -300))) "BININT"
                | _ -> failtest "dict"
            }
            test "refuses every other global by name, before anything runs" {
                let evil = pk [ "cos\nsystem\n(S'touch "; sentinel; "'\ntR." ]
                expectRefused "refused global os.system in evil.pkl" (fun () -> Pickle.load "evil.pkl" evil 0 noPid |> ignore)
                let inst = pk [ "(S'x'\nios\nsystem\n." ]
                expectRefused "refused global os.system in i.pkl" (fun () -> Pickle.load "i.pkl" inst 0 noPid |> ignore)
                // protocol 4: STACK_GLOBAL with memoized strings
                let p4 = pk [ 0x80uy; 4uy; 0x95uy; BitConverter.GetBytes 30L; 0x8cuy; 8uy; "builtins"; 0x94uy; 0x8cuy; 4uy; "eval"; 0x94uy; 0x93uy; 0x94uy; 0x8cuy; 1uy; "1"; 0x85uy; 0x52uy; 0x2euy ]
                expectRefused "refused global builtins.eval in p4.pkl" (fun () -> Pickle.load "p4.pkl" p4 0 noPid |> ignore)
                // a set is not a value the reader accepts
                expectRefused "refused a set" (fun () -> Pickle.load "s.pkl" (pk [ 0x80uy; 4uy; 0x8fuy; 0x2euy ]) 0 noPid |> ignore)
                Expect.isFalse (File.Exists sentinel) "nothing ran"
            }
            test "numpy scalars (DomainBed's random hparams) are numbers; other numpy globals are refused" {
                let scalar (code: string) (bytes: byte[]) =
                    // numpy pickles the raw bytes as a latin1-decoded str (UTF-8 on the wire) passed to _codecs.encode
                    let text = Text.Encoding.UTF8.GetBytes(Text.Encoding.Latin1.GetString bytes)
                    pk [ 0x80uy; 2uy; "cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX"; BitConverter.GetBytes(code.Length); code
                         0x89uy; 0x88uy; 0x87uy; 0x52uy; "(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
                         "c_codecs\nencode\nX"; BitConverter.GetBytes(text.Length); text; "X\x06\x00\x00\x00latin1"; 0x86uy; 0x52uy; 0x86uy; 0x52uy; 0x2euy ]
                let v, _ = Pickle.load "s.pkl" (scalar "f8" (BitConverter.GetBytes 0.1)) 0 noPid
                Expect.equal v (PyFloat 0.1) "float64 scalar"
                let v, _ = Pickle.load "s.pkl" (scalar "i8" (BitConverter.GetBytes 7L)) 0 noPid
                Expect.equal v (PyInt(BigInteger 7)) "int64 scalar"
                expectRefused "refused numpy scalar of dtype O" (fun () -> Pickle.load "s.pkl" (scalar "O" [||]) 0 noPid |> ignore)
                expectRefused "refused global numpy.core.multiarray._reconstruct" (fun () ->
                    Pickle.load "a.pkl" (pk [ 0x80uy; 2uy; "cnumpy.core.multiarray\n_reconstruct\n." ]) 0 noPid |> ignore)
            }
            test "truncated and corrupt pickles are clear errors naming the source" {
                expectRefused "t.pkl: truncated or corrupt pickle" (fun () -> Pickle.load "t.pkl" (pk [ 0x80uy; 2uy; 0x7duy ]) 0 noPid |> ignore)
                expectRefused "t.pkl: truncated" (fun () -> Pickle.load "t.pkl" (pk [ 0x80uy; 2uy; 0x58uy; BitConverter.GetBytes 100 ]) 0 noPid |> ignore)
                expectRefused "t.pkl: unknown pickle opcode 0xff" (fun () -> Pickle.load "t.pkl" (pk [ 0x80uy; 2uy; 0xffuy ]) 0 noPid |> ignore)
                expectRefused "t.pkl: memo entry 5 read before it was written" (fun () -> Pickle.load "t.pkl" (pk [ 0x80uy; 2uy; 0x68uy; 5uy; 0x2euy ]) 0 noPid |> ignore)
            }
        ]

        testList "files" [
            test "a torch.save zip file and its legacy twin hold the same tensors as the safetensors file" {
                use st = readSafeTensors (interop "timm_tiny.safetensors")
                use legacyFile = File.OpenRead(interop "timm_tiny_legacy.pth")
                use legacy = TorchFile.read (interop "timm_tiny_legacy.pth") legacyFile
                match legacy.Root with
                | PyDict d ->
                    Expect.isTrue d.Ordered "an OrderedDict"
                    Expect.equal d.Count st.Tensors.Length "same count"
                    Expect.isNonEmpty d.Attributes "the state dict's _metadata (BUILD) is kept aside"
                    for k, v in d.Items do
                        match k, v with
                        | PyStr name, PyTensor t ->
                            use x = legacy.Tensor t
                            Expect.isTrue (tensorsEqual x st[name]) name
                        | _ -> failtest "entry"
                | _ -> failtest "root"
            }
            test "tensors written by TorchFile.write read back bit for bit, views included" {
                let dir = Directory.CreateTempSubdirectory("sfmoe-io-").FullName
                try
                    let path = Path.Combine(dir, "w.pth")
                    use a = torch.randn(3L, 4L)
                    use b = torch.arange(6L, dtype = torch.ScalarType.Int64)
                    use c = a.t()
                    use e = torch.zeros(0L, 2L)
                    use h = torch.randn(5L).to_type(torch.ScalarType.Float16)
                    writeFile path (fun name -> TorchFile.write name [ "a", a; "b", b; "c", c; "e", e; "h", h ])
                    use file = File.OpenRead path
                    use ck = TorchFile.read path file
                    match ck.Root with
                    | PyDict d ->
                        Expect.sequenceEqual (d.Keys |> Seq.map (function PyStr s -> s | _ -> "")) [ "a"; "b"; "c"; "e"; "h" ] "order"
                        for (k, v), expected in Seq.zip d.Items [ a; b; c; e; h ] do
                            match v with
                            | PyTensor t ->
                                use x = ck.Tensor t
                                Expect.isTrue (tensorsEqual x expected) (sprintf "%A" k)
                            | _ -> failtest "tensor"
                    | _ -> failtest "root"
                finally
                    Directory.Delete(dir, true)
            }
            test "truncated or corrupt files are errors naming the file" {
                let dir = Directory.CreateTempSubdirectory("sfmoe-io-").FullName
                try
                    let check (src: string) (cut: int) (format: ImportSource.Format) =
                        let bytes = File.ReadAllBytes src
                        let path = Path.Combine(dir, sprintf "cut%d%s" cut (Path.GetExtension src))
                        File.WriteAllBytes(path, bytes[0 .. min (bytes.Length - 1) cut])
                        let e = Expect.throwsC (fun () -> (readImport format path :> IDisposable).Dispose()) id
                        Expect.stringContains e.Message (Path.GetFileName path) (sprintf "names the file (%s)" e.Message)
                    for cut in [ 10; 100; 1000; 50_000; 140_000 ] do
                        check (interop "deit_tiny.pth") cut ImportSource.Deit
                    for cut in [ 10; 200; 30_000; 63_000 ] do
                        check (interop "timm_tiny_legacy.pth") cut ImportSource.Timm
                    for cut in [ 10; 5000; 100_000 ] do
                        check (interop "augreg_tiny.npz") cut ImportSource.Augreg
                    for cut in [ 10; 1000; 200_000 ] do
                        check (interop "sfmoe_dg_tiny.pkl") cut ImportSource.SfMoeDg
                    let junk = Path.Combine(dir, "junk.pth")
                    File.WriteAllText(junk, "hello")
                    expectRefused "junk.pth: not a torch.save file" (fun () -> (readImport ImportSource.Deit junk :> IDisposable).Dispose())
                finally
                    Directory.Delete(dir, true)
            }
            test "unsafe pickles are refused with the global's name and never run" {
                if File.Exists sentinel then File.Delete sentinel
                for file, format, fragment in
                    [ "model.pkl", ImportSource.SfMoeDg, "refused global argparse.Namespace in model.pkl"
                      "os_system.pkl", ImportSource.Deit, "refused global os.system in os_system.pkl"
                      "posix_system.pth", ImportSource.Deit, "refused global posix.system in posix_system.pth"
                      "eval_protocol4.pkl", ImportSource.Timm, "refused global builtins.eval in eval_protocol4.pkl" ] do
                    expectRefused fragment (fun () -> (readImport format (interop ("unsafe/" + file)) :> IDisposable).Dispose())
                Expect.isFalse (File.Exists sentinel) "nothing ran"
            }
        ]

        testList "streams" [
            test "safetensors: a write to a memory stream reads back the same tensors and metadata, and writes the same bytes" {
                use a = torch.randn(3L, 4L)
                use b = torch.arange(6L, dtype = torch.ScalarType.Int64)
                use c = a.t ()
                use e = torch.zeros(0L, 2L)
                use h = torch.randn(5L).to_type(torch.ScalarType.BFloat16)
                use m = torch.tensor([| true; false; true |])
                let meta = Map.ofList [ "config", "{\"embed_dim\": 32}"; "format", "pt" ]
                let tensors = [ "a", a; "b", b; "c", c; "e", e; "h", h; "m", m ]
                use first = new MemoryStream()
                SafeTensors.write "out/w.safetensors" meta tensors first
                let bytes = first.ToArray()
                use back = SafeTensors.read "w.safetensors" (new MemoryStream(bytes))
                Expect.equal back.Metadata meta "metadata"
                sameTensors "read back" back.Tensors tensors
                use again = new MemoryStream()
                SafeTensors.write "w.safetensors" back.Metadata back.Tensors again
                Expect.sequenceEqual (again.ToArray()) bytes "the same bytes"
                let onDisk = File.ReadAllBytes(interop "timm_tiny.safetensors")
                use fromFile = readSafeTensors (interop "timm_tiny.safetensors")
                use fromPipe = SafeTensors.read "pipe" (new NonSeekable(new MemoryStream(onDisk)))
                sameTensors "a non-seekable stream" fromPipe.Tensors fromFile.Tensors
                expectCutsRefused "given/name.safetensors" bytes [ 0; 7; 8; 20; bytes.Length - 1 ] (fun n s -> (SafeTensors.read n s :> IDisposable).Dispose())
            }
            test "torch.save: a write to a memory stream reads back the same tensors; the archive folder is named after the name" {
                use a = torch.randn(3L, 4L)
                use b = torch.arange(6L, dtype = torch.ScalarType.Int64)
                use c = a.t ()
                use h = torch.randn(5L).to_type(torch.ScalarType.Float16)
                let tensors = [ "a", a; "b", b; "c", c; "h", h ]
                use ms = new MemoryStream()
                TorchFile.writeWrapped (Some "model") "runs/deit.small-v1.pth" tensors ms
                let bytes = ms.ToArray()
                do
                    use zip = new Compression.ZipArchive(new MemoryStream(bytes), Compression.ZipArchiveMode.Read)
                    for entry in zip.Entries do
                        Expect.isTrue (entry.FullName.StartsWith "deit_small-v1/") entry.FullName
                use src = ImportSource.read ImportSource.Deit "deit.small-v1.pth" (new MemoryStream(bytes))
                sameTensors "read back" src.Tensors tensors
                Expect.equal src.Info [] "nothing but the state dict"
                use pipe = ImportSource.read ImportSource.Deit "pipe" (new NonSeekable(new MemoryStream(bytes)))
                sameTensors "a non-seekable stream" pipe.Tensors tensors
                expectCutsRefused "given/name.pth" bytes [ 0; 4; 100; bytes.Length / 2; bytes.Length - 1 ] (fun n s -> (TorchFile.read n s :> IDisposable).Dispose())
                let legacy = File.ReadAllBytes(interop "timm_tiny_legacy.pth")
                expectCutsRefused "given/legacy.pth" legacy [ 1; 200; legacy.Length - 1 ] (fun n s -> (ImportSource.read ImportSource.Timm n s :> IDisposable).Dispose())
            }
            test "npz and every import format read from streams as from files; cuts name the given name" {
                for file, format in
                    [ "augreg_tiny.npz", ImportSource.Augreg; "deit_tiny.pth", ImportSource.Deit; "timm_tiny_legacy.pth", ImportSource.Timm
                      "timm_tiny.safetensors", ImportSource.Timm; "sfmoe_dg_tiny.pkl", ImportSource.SfMoeDg; "gmoe_tiny.pkl", ImportSource.GMoe ] do
                    let bytes = File.ReadAllBytes(interop file)
                    use fromFile = readImport format (interop file)
                    use fromPipe = ImportSource.read format file (new NonSeekable(new MemoryStream(bytes)))
                    sameTensors file fromPipe.Tensors fromFile.Tensors
                    Expect.equal fromPipe.Renamed fromFile.Renamed (file + ": renamed")
                    Expect.equal fromPipe.Name file (file + ": the given name")
                let npz = File.ReadAllBytes(interop "augreg_tiny.npz")
                expectCutsRefused "given/name.npz" npz [ 0; 10; npz.Length / 2; npz.Length - 1 ] (fun n s -> for _, t in Npz.read n s do t.Dispose())
            }
            test "export: both formats written to a stream import back as the network's state dict" {
                use fx = readSafeTensors (interop "deit_tiny.expected.safetensors")
                let cfg = { configOf fx with Pattern = Pattern.parseOrFail "F,S" }
                let net = vitNet cfg 3L
                use _ = net.Module
                let expected = Export.stateDict net
                for format, importAs in [ Export.TimmSafetensors, ImportSource.Timm; Export.PyTorchPth, ImportSource.Timm ] do
                    use ms = new MemoryStream()
                    Export.write format "export.bin" net (Map.ofList [ "note", "x" ]) ms
                    use src = ImportSource.read importAs "export.bin" (new MemoryStream(ms.ToArray()))
                    sameTensors (sprintf "%A" format) src.Tensors expected
            }
        ]

        testList "formats" [
            test "deit: torch.save({'model': sd}) of a distilled DeiT matches the reference" {
                use fx = readSafeTensors (interop "deit_tiny.expected.safetensors")
                let cfg = configOf fx
                let net, r = importInto ImportSource.Deit (interop "deit_tiny.pth") cfg None
                use _ = net.Module
                Expect.equal r.Loaded.Length 35 "every tensor loaded"
                Expect.isEmpty r.Resampled "nothing resampled"
                Expect.isEmpty r.Reinitialised "heads loaded"
                use y = logitsOf net fx["input.x"]
                expectClose 1e-5 "logits" y fx["expected.logits"]
            }
            test "deit at another image size: pos_embed resampled at import matches timm's resize_pos_embed" {
                use fx = readSafeTensors (interop "deit_tiny.expected.safetensors")
                let cfg = { configOf fx with ImgSize = 48 }
                let net, r = importInto ImportSource.Deit (interop "deit_tiny.pth") cfg None
                use _ = net.Module
                Expect.equal (r.Resampled |> List.map (fun (k, a, b) -> k, List.ofArray a, List.ofArray b)) [ "pos_embed", [ 1L; 18L; 32L ], [ 1L; 38L; 32L ] ] "resampled"
                use y = logitsOf net fx["input.x48"]
                expectClose 1e-5 "logits at 48x48" y fx["expected.logits48"]
            }
            test "half-precision checkpoints load into a float32 model, resampling included" {
                use fx = readSafeTensors (interop "deit_tiny.expected.safetensors")
                let dir = Directory.CreateTempSubdirectory("sfmoe-io-").FullName
                try
                    let path = Path.Combine(dir, "half.pth")
                    do
                        use src = readImport ImportSource.Deit (interop "deit_tiny.pth")
                        let half = src.Tensors |> List.map (fun (n, t) -> n, t.to_type(torch.ScalarType.Float16))
                        writeFile path (fun name -> TorchFile.writeWrapped (Some "model") name half)
                        for _, t in half do t.Dispose()
                    let net, r = importInto ImportSource.Deit path { configOf fx with ImgSize = 48 } None
                    use _ = net.Module
                    Expect.equal r.Resampled.Length 1 "pos_embed resampled"
                    use y = logitsOf net fx["input.x48"]
                    expectClose 1e-2 "logits within half precision" y fx["expected.logits48"]
                finally
                    Directory.Delete(dir, true)
            }
            test "timm: flat .safetensors and legacy-format .pth state dicts" {
                use fx = readSafeTensors (interop "timm_tiny.expected.safetensors")
                let cfg = configOf fx
                for file in [ "timm_tiny.safetensors"; "timm_tiny_legacy.pth" ] do
                    let net, r = importInto ImportSource.Timm (interop file) cfg None
                    use _ = net.Module
                    Expect.isEmpty r.Ignored file
                    use y = logitsOf net fx["input.x"]
                    expectClose 1e-5 file y fx["expected.logits"]
            }
            test "augreg: Google's .npz (prefix, pre_logits, optimizer state) converts to timm's layout" {
                use fx = readSafeTensors (interop "augreg_tiny.expected.safetensors")
                let cfg = configOf fx
                use src = readImport ImportSource.Augreg (interop "augreg_tiny.npz")
                Expect.equal src.Normalization.Name "inception" "augreg weights expect mean = std = 0.5"
                let net = vitNet cfg 3L
                use _ = net.Module
                let r = ImportLoad.loadInto net src None
                Expect.equal (r.Reinitialised |> List.map fst) [ "head.weight"; "head.bias" ] "head re-initialised (pre_logits)"
                Expect.containsAll (r.Ignored |> List.map fst) [ "opt/target/pre_logits/kernel"; "opt/target/pre_logits/bias"; "opt/target/head/kernel"; "opt/target/head/bias"; "opt/state/step" ] "ignored"
                Expect.contains r.Renamed ("opt/target/Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/kernel", "blocks.1.attn.qkv.weight") "qkv renamed"
                net.Module.eval () |> ignore
                use _ = torch.no_grad ()
                use o = (vitOf net).Run(fx["input.x"])
                expectClose 1e-5 "features" o.Features fx["expected.features"]
            }
            test "augreg hybrid: R+ViT .npz (compressed) matches the reference, also at odd input sizes" {
                use fx = readSafeTensors (interop "augreg_hybrid_tiny.expected.safetensors")
                let cfg = configOf fx
                Expect.isSome cfg.Hybrid "a hybrid config"
                let net, r = importInto ImportSource.Augreg (interop "augreg_hybrid_tiny.npz") cfg None
                use _ = net.Module
                Expect.isEmpty r.Ignored "nothing ignored"
                Expect.isEmpty r.Initialised "nothing left at init"
                use y = logitsOf net fx["input.x"]
                expectClose 1e-5 "logits 32x32" y fx["expected.logits"]
                use y2 = logitsOf net fx["input.x2"]
                expectClose 1e-5 "logits 36x30 (5x4 grid)" y2 fx["expected.logits2"]
                // the timm-named weights load directly, strictly
                use m = new Vit.SfMoeVit(cfg, Dd.cpu, Some 1L)
                Weights.load true m (fx.Tensors |> List.filter (fun (n, _) -> not (n.StartsWith "input." || n.StartsWith "expected."))) |> ignore
                m.eval () |> ignore
                use _ = torch.no_grad ()
                use y3 = m.forward fx["input.x2"]
                expectClose 1e-5 "timm names" y3 fx["expected.logits2"]
            }
            test "sfmoe-dg: DomainBed's model.pkl with lucidrains MoE keys and numpy hparams" {
                use fx = readSafeTensors (interop "sfmoe_dg_tiny.expected.safetensors")
                let cfg = configOf fx
                use src = readImport ImportSource.SfMoeDg (interop "sfmoe_dg_tiny.pkl")
                Expect.equal src.Algorithm (Some "SFMOE") "args.algorithm"
                Expect.equal src.Dataset (Some "PACS") "args.dataset"
                Expect.stringContains (src.Info |> List.find (fun (k, _) -> k = "model_hparams") |> snd) "dict" "hparams summarised"
                Expect.isTrue (src.Renamed |> List.exists (fun (a, b) -> a = "model.blocks.1.mlp.experts.w1" && b = "blocks.1.mlp.experts.w1")) "model. prefix removed"
                let net = vitNet cfg 3L
                use _ = net.Module
                let r = ImportLoad.loadInto net src None
                Expect.isEmpty r.Initialised "the MoE keys are loaded"
                net.Module.eval () |> ignore
                use y = logitsOf net fx["input.x"]
                expectClose 1e-5 "logits" y fx["expected.logits"]
                // Without a model the file's algorithm (SFMOE) picks sfmoe_small_patch16_224: it does not fit, and the error
                // names the key and both shapes.
                let stated = src.Config.Value
                Expect.equal stated.NumClasses 5 "model_num_classes"
                let big = vitNet stated 0L
                use _ = big.Module
                expectRefused "shape mismatch: cls_token: checkpoint [1, 1, 32], model [1, 1, 384]" (fun () -> ImportLoad.loadInto big src None |> ignore)
            }
            test "gmoe: DomainBed's model.pkl with tutel keys" {
                use fx = readSafeTensors (interop "gmoe_tiny.expected.safetensors")
                let cfg = configOf fx
                let net, r = importInto ImportSource.GMoe (interop "gmoe_tiny.pkl") cfg None
                use _ = net.Module
                Expect.equal (r.Ignored |> List.map fst) [ "model.blocks.0.mlp._num_global_experts" ] "tutel buffer ignored"
                Expect.contains r.Renamed ("model.blocks.0.mlp.experts.batched_fc1_w", "blocks.0.mlp.experts.w1") "tutel renamed"
                use y = logitsOf net fx["input.x"]
                expectClose 1e-5 "logits" y fx["expected.logits"]
            }
            test "the architecture is inferred from the tensors when no model is given" {
                use src = readImport ImportSource.GMoe (interop "gmoe_tiny.pkl")
                let c, notes = ImportInfer.inferConfig src
                Expect.equal (Pattern.print c.Pattern) "S,F" "pattern from the MoE keys"
                Expect.isTrue (match c.Moe.Router with CosineRouter _ -> true | LinearRouter -> false) "cosine router"
                Expect.equal c.Moe.NumExperts 6 "E"
                Expect.isTrue c.Moe.ExpertBias "expert biases"
                Expect.equal (c.EmbedDim, c.Depth, c.ImgSize, c.PatchSize, c.NumClasses) (32, 2, 32, 8, 5) "dims"
                Expect.exists notes (fun n -> n.Contains "num_heads") "the head count is an assumption"
                use hy = readImport ImportSource.Augreg (interop "augreg_hybrid_tiny.npz")
                let h, _ = ImportInfer.inferConfig hy
                Expect.equal h.Hybrid (Some { Layers = [ 1; 1 ]; Channels = [ 64; 128 ]; StemChannels = 16; NumGroups = 16 }) "hybrid stem (GroupNorm groups cannot be inferred: the most up to 32 that divide every width)"
                Expect.equal h.ImgSize 32 "image size from the grid and the stride"
            }
        ]

        testList "upcycling" [
            test "--experts copy puts the dense FFN in every expert; random keeps the init and drops it" {
                use fx = readSafeTensors (interop "deit_tiny.expected.safetensors")
                let dense = configOf fx
                let sparse = { dense with Pattern = Pattern.parseOrFail "F,S"; Moe = { dense.Moe with NumExperts = 3 } }
                use src = readImport ImportSource.Deit (interop "deit_tiny.pth")
                let fc1 = src.Tensors |> List.find (fun (n, _) -> n = "blocks.1.mlp.fc1.weight") |> snd
                let copy = vitNet sparse 5L
                use _ = copy.Module
                let r = ImportLoad.loadInto copy src (Some Upcycle.CopyDense)
                Expect.equal r.Upcycled [ "blocks.1.mlp.fc1.weight", "blocks.1.mlp.experts.w1"; "blocks.1.mlp.fc2.weight", "blocks.1.mlp.experts.w2" ] "upcycled"
                Expect.equal (r.Ignored |> List.map fst) [ "blocks.1.mlp.fc1.bias"; "blocks.1.mlp.fc2.bias" ] "biases dropped (bias-free experts)"
                Expect.equal (r.Initialised |> List.map fst) [ "blocks.1.mlp.gate.w_gating" ] "router at init"
                let w1 = (vitOf copy).get_parameter "blocks.1.mlp.experts.w1"
                for e in 0L .. 2L do
                    use we = w1.select(0L, e)
                    use ft = fc1.t ()
                    Expect.isTrue (tensorsEqual we ft) (sprintf "expert %d = fc1^T" e)
                let fresh = vitNet sparse 5L
                use _ = fresh.Module
                let random = vitNet sparse 5L
                use _ = random.Module
                let r2 = ImportLoad.loadInto random src (Some Upcycle.KeepInit)
                Expect.isEmpty r2.Upcycled "nothing copied"
                Expect.equal (r2.Ignored |> List.map fst) [ "blocks.1.mlp.fc1.weight"; "blocks.1.mlp.fc1.bias"; "blocks.1.mlp.fc2.weight"; "blocks.1.mlp.fc2.bias" ] "dense FFN dropped"
                for k in [ "blocks.1.mlp.experts.w1"; "blocks.1.mlp.experts.w2"; "blocks.1.mlp.gate.w_gating" ] do
                    Expect.isTrue (tensorsEqual ((vitOf random).get_parameter k) ((vitOf fresh).get_parameter k)) (k + " at its init")
                Expect.equal (ImportLoad.defaultExperts sparse) Upcycle.KeepInit "SF-MoE default: random"
                Expect.equal (ImportLoad.defaultExperts { sparse with Moe = MoeConfig.gmoe }) Upcycle.CopyDense "GMoE default: copy"
            }
            test "copied experts with biases, both choices and no dropping compute the dense model exactly" {
                use fx = readSafeTensors (interop "deit_tiny.expected.safetensors")
                let dense = configOf fx
                let sparse =
                    { dense with
                        Pattern = Pattern.parseOrFail "S,S"
                        Moe = { dense.Moe with NumExperts = 4; ExpertBias = true; SecondPolicy = SecondAll; CapacityEval = Dropless } }
                let net, r = importInto ImportSource.Deit (interop "deit_tiny.pth") sparse (Some Upcycle.CopyDense)
                use _ = net.Module
                Expect.equal r.Upcycled.Length 8 "weights and biases of two blocks"
                use y = logitsOf net fx["input.x"]
                expectClose 1e-5 "renormalised top-2 gates sum to 1 over identical experts" y fx["expected.logits"]
            }
            test "shape mismatches, missing and unexpected keys fail the whole import and name them" {
                use fx = readSafeTensors (interop "deit_tiny.expected.safetensors")
                let cfg = configOf fx
                use src = readImport ImportSource.Deit (interop "deit_tiny.pth")
                let wide = vitNet { cfg with EmbedDim = 48; NumHeads = 4 } 0L
                use _ = wide.Module
                expectRefused "shape mismatch: cls_token: checkpoint [1, 1, 32], model [1, 1, 48]" (fun () -> ImportLoad.loadInto wide src None |> ignore)
                let plain = vitNet { cfg with Distilled = false } 0L
                use _ = plain.Module
                expectRefused "the checkpoint is a distilled DeiT" (fun () -> ImportLoad.loadInto plain src None |> ignore)
                let deep = vitNet { cfg with Depth = 3; Pattern = Pattern.dense 3 } 0L
                use _ = deep.Module
                let before = (vitOf deep).get_parameter("blocks.0.norm1.weight").clone()
                expectRefused "missing in the checkpoint: blocks.2.norm1.weight" (fun () -> ImportLoad.loadInto deep src None |> ignore)
                Expect.isTrue (tensorsEqual before ((vitOf deep).get_parameter "blocks.0.norm1.weight")) "nothing copied"
            }
        ]

        testList "hybrid" [
            test "R26 and R50 hybrids: timm's parameter counts and names" {
                for name, published in [ "vit_small_r26_s32_224", 36_431_912L; "vit_base_r50_s16_224", 98_659_112L ] do
                    let c = Registry.tryCreate name |> Result.defaultWith failwith
                    Expect.equal (Summary.totalParams c) published (name + ": timm's count (36.43M; 98.95M at 384 minus 380 pos_embed rows)")
                let c = Registry.tryCreate "hybrid_sfmoe_small_r26_s32_224" |> Result.defaultWith failwith
                Expect.equal (VitConfig.numTokens c) 50 "7x7 grid + cls (spec §4)"
                Expect.equal c.Moe.NumExperts 6 "E = 6"
                Expect.equal (Pattern.print c.Pattern) "Fx5,S,Fx5,S" "pattern"
                use m = new Vit.SfMoeVit(c, Dd.cpu, Some 1L)
                Expect.equal (Layers.countParams m) (Summary.totalParams c) "counted = closed form"
                Expect.equal (Summary.parts m |> List.sumBy (fun p -> p.Params)) (Summary.totalParams c) "parts add up"
                let names = m.state_dict().Keys |> Seq.filter (fun k -> k.StartsWith "patch_embed.") |> List.ofSeq
                Expect.equal names.Length (3 + 4 * 3 + 8 * 9 + 2) "stem 3, projection shortcuts 4x3, bottlenecks 8x9, proj 2"
                for k in [ "patch_embed.backbone.stem.conv.weight"; "patch_embed.backbone.stem.norm.bias"
                           "patch_embed.backbone.stages.0.blocks.0.downsample.conv.weight"; "patch_embed.backbone.stages.3.blocks.1.norm3.weight"
                           "patch_embed.proj.weight" ] do
                    Expect.contains names k k
                Expect.sequenceEqual (m.get_parameter "patch_embed.proj.weight").shape [| 384L; 2048L; 1L; 1L |] "1x1 projection of 2048 features"
            }
            test "hybrid_backbone in JSON configs: presets, objects, errors" {
                let parse (js: string) = ConfigJson.parse Registry.tryCreate js
                let c = parse """{"model": "vit_small_r26_s32_224", "num_classes": 7}"""
                Expect.equal c.Hybrid (Some HybridConfig.r26) "from the registry"
                Expect.stringContains (ConfigJson.toJson false c) "\"hybrid_backbone\":\"r26\"" "written as the preset name"
                Expect.equal (parse (ConfigJson.toJson false c)) c "round trip"
                let off = parse """{"model": "vit_small_r26_s32_224", "hybrid_backbone": null, "patch_size": 16}"""
                Expect.isNone off.Hybrid "null turns it off"
                Expect.isFalse ((ConfigJson.toJson false off).Contains "hybrid") "absent when off (existing configs unchanged)"
                let custom = parse """{"img_size": 32, "patch_size": 1, "embed_dim": 16, "depth": 1, "num_heads": 2, "num_classes": 3, "hybrid_backbone": {"layers": [1], "channels": [64], "stem_channels": 8, "num_groups": 8}}"""
                Expect.equal custom.Hybrid (Some { Layers = [ 1 ]; Channels = [ 64 ]; StemChannels = 8; NumGroups = 8 }) "object"
                Expect.equal (VitConfig.grid custom) 8 "32 -> 16 -> 8 (one stage)"
                Expect.equal (parse (ConfigJson.toJson false custom)) custom "object round trip"
                let err (js: string) =
                    try parse js |> ignore; failtest "should fail"
                    with :? SfMoe.ConfigException as e -> e.Message
                Expect.stringContains (err """{"model": "vit_small_r26_s32_224", "hybrid_backbone": "r101"}""") "hybrid_backbone must be \"r26\", \"r50\", null or an object, got \"r101\"" "unknown preset"
                Expect.stringContains (err """{"model": "vit_small_r26_s32_224", "hybrid_backbone": {"num_groups": 24}}""") "hybrid_backbone: stem_channels (64) must be divisible by num_groups (24)" "groups"
                Expect.stringContains (err """{"model": "vit_small_r26_s32_224", "patch_size": 2, "img_size": 96}""") "not a multiple of patch_size (2)" "3x3 feature map and patch 2"
            }
        ]

        testList "export" [
            test "an export loads in PyTorch: torch.load(weights_only=True) and load_state_dict(strict=True) (needs python3-torch)" {
                if not pythonTorch.Value then skiptest "python3-torch is not installed here (Debian: apt-get install python3-torch)"
                use fx = readSafeTensors (interop "deit_tiny.expected.safetensors")
                let cfg = configOf fx
                let dir = Directory.CreateTempSubdirectory("sfmoe-export-").FullName
                try
                    for name, c in [ "dense", cfg; "sparse", { cfg with Pattern = Pattern.parseOrFail "F,S"; Moe = { cfg.Moe with SecondPolicy = SecondAll } } ] do
                        let net, _ = importInto ImportSource.Deit (interop "deit_tiny.pth") c (Some Upcycle.CopyDense)
                        use _ = net.Module
                        let pth = Path.Combine(dir, name + ".pth")
                        let st = Path.Combine(dir, name + ".safetensors")
                        writeFile pth (fun name -> Export.write Export.PyTorchPth name net Map.empty)
                        writeFile st (fun name -> Export.write Export.TimmSafetensors name net (Map.ofList [ "sfmoe_model_config", ConfigJson.toJson false c ]))
                        let args = [ "verify-export"; "--pth"; pth; "--tensors"; st ]
                        let args =
                            if name = "dense" then
                                let check = Path.Combine(dir, "check.safetensors")
                                use y = logitsOf net fx["input.x"]
                                writeSafeTensors check (Map.ofList [ "config", ConfigJson.toJson false c ]) [ "input.x", fx["input.x"]; "expected.logits", y ]
                                args @ [ "--check"; check ]
                            else args
                        let code, out = runPython args
                        Expect.equal code 0 out
                        Expect.stringContains out "verify-export OK" out
                finally
                    Directory.Delete(dir, true)
            }
            test "sfmoe import and export on the command line" {
                let dir = Directory.CreateTempSubdirectory("sfmoe-cli-io-").FullName
                try
                    let cfgFile = Path.Combine(dir, "sf.json")
                    File.WriteAllText(cfgFile, """{"img_size": 48, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "num_classes": 3, "distilled": true, "pattern": "F,S"}""")
                    let out = Path.Combine(dir, "m.safetensors")
                    let r = CliTests.sfmoe [ "import"; "--from"; "deit"; interop "deit_tiny.pth"; "--output"; out; "--model-config"; cfgFile ]
                    Expect.equal r.Code 0 r.Err
                    for fragment in [ "resampled: 1"; "pos_embed [1, 18, 32] -> [1, 38, 32]"; "re-initialised: 4"; "head.weight (the checkpoint has 5 classes, the model 3)"
                                      "initialised: 3"; "blocks.1.mlp.gate.w_gating (router"; "ignored: 4"; "blocks.1.mlp.fc1.weight (dense FFN of block 1"
                                      "normalization: imagenet"; "wrote " + out; "tensors (--verbose lists them)" ] do
                        Expect.stringContains r.Out fragment fragment
                    let j = CliTests.sfmoe [ "import"; "--from"; "deit"; interop "deit_tiny.pth"; "-o"; out; "--model-config"; cfgFile; "--experts"; "copy"; "--json" ]
                    Expect.equal j.Code 0 j.Err
                    use doc = JsonDocument.Parse j.Out
                    Expect.equal (doc.RootElement.GetProperty("upcycled").GetArrayLength()) 2 "json: upcycled"
                    Expect.equal (doc.RootElement.GetProperty("loaded").GetArrayLength()) 26 "json: loaded"
                    let pth = Path.Combine(dir, "m.pth")
                    let e = CliTests.sfmoe [ "export"; "--checkpoint"; out; "--format"; "pytorch"; "--output"; pth ]
                    Expect.equal e.Code 0 e.Err
                    use file = File.OpenRead pth
                    use ck = TorchFile.read pth file
                    match ck.Root with
                    | PyDict d -> Expect.isSome (d.TryFind "blocks.1.mlp.experts.w1") "lucidrains layout"
                    | _ -> failtest "an OrderedDict"
                    let bad = CliTests.sfmoe [ "import"; "--from"; "sfmoe-dg"; interop "unsafe/model.pkl"; "--output"; Path.Combine(dir, "x.safetensors") ]
                    Expect.equal bad.Code 2 bad.Err
                    Expect.equal (bad.Err.Trim()) "sfmoe: error: refused global argparse.Namespace in model.pkl (only tensors, numbers, strings, lists, tuples, dicts and ordered dicts are read; nothing in the file is executed)" "one line"
                    let fmt = CliTests.sfmoe [ "import"; "--from"; "onnx"; interop "deit_tiny.pth"; "--output"; Path.Combine(dir, "x.safetensors") ]
                    Expect.equal fmt.Code 2 fmt.Err
                    Expect.stringContains fmt.Err "unknown pretrained format onnx: expected deit, timm, augreg, sfmoe-dg, gmoe, torchvision" "format"
                    let help = CliTests.sfmoe [ "import"; "--help" ]
                    Expect.stringContains help.Out "random for SF-MoE models" "the default of --experts is documented"
                finally
                    Directory.Delete(dir, true)
            }
        ]

        testList "full-size (slow)" [
            test "slow: DeiT-S distilled (22M parameters) from a torch.save file matches the reference" {
                use fx = readSafeTensors (interop "slow_deit_small.expected.safetensors")
                let weights = recipeTensors fx.Metadata
                let dir = Directory.CreateTempSubdirectory("sfmoe-slow-").FullName
                try
                    let path = Path.Combine(dir, "deit_small_distilled_patch16_224.pth")
                    // DeiT's release layout: torch.save({'model': state_dict}).
                    writeFile path (fun name -> TorchFile.writeWrapped (Some "model") name weights)
                    for _, t in weights do t.Dispose()
                    let cfg = Registry.tryCreate "deit_small_distilled_patch16_224" |> Result.defaultWith failwith
                    let net, r = importInto ImportSource.Deit path cfg None
                    use _ = net.Module
                    Expect.equal r.Loaded.Length 155 "every tensor"
                    use x = recipeInput fx.Metadata
                    use y = logitsOf net x
                    expectClose 1e-5 "logits" y fx["expected.logits"]
                finally
                    Directory.Delete(dir, true)
            }
            test "slow: torchvision ResNet-50 for the ERM baseline matches torchvision" {
                use fx = readSafeTensors (interop "slow_resnet50.expected.safetensors")
                let weights = recipeTensors fx.Metadata
                let dir = Directory.CreateTempSubdirectory("sfmoe-slow-").FullName
                try
                    let path = Path.Combine(dir, "resnet50.pth")
                    writeFile path (fun name -> TorchFile.write name weights)
                    for _, t in weights do t.Dispose()
                    use src = readImport ImportSource.Torchvision path
                    torch.manual_seed 0L |> ignore
                    let net = Networks.resnet Dd.cpu 3 1000 0.0
                    use _ = net.Module
                    let r = ImportLoad.loadInto net src None
                    Expect.isEmpty r.Reinitialised "1000 classes: fc loaded into the classifier"
                    Expect.contains r.Renamed ("fc.weight", "classifier.weight") "fc -> classifier"
                    net.SetTraining false
                    use x = recipeInput fx.Metadata
                    use _ = torch.no_grad ()
                    let o = Networks.forward net None false x
                    use l = o.Logits
                    o.Aux.Dispose()
                    expectClose 1e-5 "logits" l fx["expected.logits"]
                finally
                    Directory.Delete(dir, true)
            }
        ]
    ]
