/// Loading TorchSharp's native library with an actionable error.
/// TorchSharp 0.107's libLibTorchSharp.so needs GLIBCXX_3.4.32, which Debian 12 lacks; the build patches the
/// copy in every output folder (build/TorchSharpNative.targets). When that patch is missing or failed,
/// TorchSharp reports a misleading "package not restored" error: this module replaces it with what to do.
module SfMoe.Core.Native

open System
open System.IO
open System.Runtime.InteropServices
open TorchSharp
open SfMoe

let private libName = "libLibTorchSharp.so"

/// Places where the build puts TorchSharp's native glue: next to the app (publish with a RID) or under
/// runtimes/linux-x64/native (plain build), relative to the app and to TorchSharp.dll.
let candidatePaths () =
    let dirs =
        [ AppContext.BaseDirectory
          (try Path.GetDirectoryName(typeof<torch.Tensor>.Assembly.Location) with _ -> null) ]
        |> List.filter (fun d -> not (String.IsNullOrEmpty d))
        |> List.distinct
    [ for d in dirs do
        yield Path.Combine(d, "runtimes", "linux-x64", "native", libName)
        yield Path.Combine(d, libName) ]
    |> List.filter File.Exists

let private advice =
    "The SfMoe build patches TorchSharp's native library for systems whose libstdc++ is older than GLIBCXX_3.4.32 "
    + "(Debian 12). Rebuild with 'dotnet build' (or 'dotnet publish') from the repository so the patch runs, "
    + "and make sure the build was not run with -p:SfMoeSkipNativeFix=true. See README.md, 'Native library on Debian 12'."

/// Load one copy of the native glue; a failure explains itself (and, for a missing libstdc++ version, what to do).
let tryLoad (path: string) : Result<unit, string> =
    try
        NativeLibrary.Load path |> ignore
        Ok()
    with :? DllNotFoundException as e ->
        // .NET's message is a generic first line followed by the loader's own (dlerror) text.
        let lines = e.Message.Split('\n') |> Array.map (fun l -> l.Trim()) |> Array.filter ((<>) "")
        let detail = if lines.Length > 1 then String.Join(" ", lines[1..]) else String.Join(" ", lines)
        if detail.Contains "GLIBCXX" then Error(sprintf "cannot load %s: %s. %s" path detail advice)
        else Error(sprintf "cannot load %s: %s" path detail)

let private load () =
    if RuntimeInformation.IsOSPlatform OSPlatform.Linux then
        for path in candidatePaths () |> List.truncate 1 do
            match tryLoad path with
            | Ok() -> ()
            | Error msg -> raise (NativeLibraryException msg)
    try
        torch.InitializeDeviceType DeviceType.CPU
    with e ->
        let rec inner (e: exn) = if isNull e.InnerException then e else inner e.InnerException
        let detail = (inner e).Message.Split('\n') |> Array.head
        raise (NativeLibraryException(sprintf "TorchSharp could not load libtorch: %s. %s" detail advice))

let private loaded = lazy (load ())

/// Load the native libraries once (thread-safe). Call before the first tensor operation; every public entry
/// point of SfMoe does.
let ensure () = loaded.Force()
