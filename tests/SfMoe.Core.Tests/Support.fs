/// Shared test helpers: locating fixtures, comparing tensors, reading fixture configs.
module SfMoe.Core.Tests.Support

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open SfMoe.Core
open SfMoe.Core.Tensors

/// The repository root (the folder holding SfMoe.sln), found from the test binary's location.
let repoRoot =
    let rec up (d: DirectoryInfo) =
        if isNull d then failwith "cannot find SfMoe.sln above the test binary"
        elif File.Exists(Path.Combine(d.FullName, "SfMoe.sln")) then d.FullName
        else up d.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

let fixture (rel: string) = Path.Combine(repoRoot, "tests", "fixtures", rel)

/// max |a - b| / max |b|: relative error that is stable where b has zeros.
let relErr (a: Tensor) (b: Tensor) : float =
    use d = (a.to_type(torch.ScalarType.Float64) - b.to_type(torch.ScalarType.Float64)).abs().max()
    use m = b.to_type(torch.ScalarType.Float64).abs().max()
    d.item<float>() / max (m.item<float>()) 1e-30

let expectClose (tol: float) (what: string) (actual: Tensor) (expected: Tensor) =
    Expect.sequenceEqual actual.shape expected.shape (what + ": shape")
    let e = relErr actual expected
    Expect.isLessThan e tol (sprintf "%s: relative error %g (tolerance %g)" what e tol)

/// The stream codecs over files, for tests (the library's files go through the host's TensorFiles and AtomicFile):
/// the path is the name the codecs' messages start with.
let readFile (path: string) (read: string -> Stream -> 'T) : 'T =
    use s = File.OpenRead path
    read path s

/// Writes a scratch file in place with a stream codec.
let writeFile (path: string) (write: string -> Stream -> unit) : unit =
    use s = File.Create path
    write path s

let readSafeTensors (path: string) = readFile path SafeTensors.read
let writeSafeTensors (path: string) (metadata: Map<string, string>) (tensors: (string * Tensor) list) =
    writeFile path (fun name -> SafeTensors.write name metadata tensors)
let readImport (format: ImportSource.Format) (path: string) = readFile path (ImportSource.read format)

/// The JSON "config" metadata entry of a fixture file.
let fixtureConfig (c: SafeTensors.Contents) : JsonElement =
    (JsonDocument.Parse(c.Metadata["config"])).RootElement

let jint (e: JsonElement) (k: string) = e.GetProperty(k).GetInt32()
let jfloat (e: JsonElement) (k: string) = e.GetProperty(k).GetDouble()
let jbool (e: JsonElement) (k: string) = e.GetProperty(k).GetBoolean()

/// Same shape and exactly equal values.
let tensorsEqual (a: Tensor) (b: Tensor) =
    a.shape = b.shape && (use e = a.eq(b) in use al = e.all() in al.item<bool>())

/// Count the tensors alive on this thread's dispose scopes before and after `f`.
let liveTensorsDuring (f: unit -> unit) : int64 =
    let stats = DisposeScopeManager.Statistics
    stats.Reset()
    f ()
    stats.ThreadTotalLiveCount
