/// numpy's .npz archives (np.savez / np.savez_compressed: a zip of .npy files) and .npy arrays, read without numpy:
/// the magic "\x93NUMPY", format version 1.0 (2-byte header length), 2.0 or 3.0 (4-byte), and a header that is a
/// Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }. Numeric dtypes only (f2, f4,
/// f8, i1-i8, u1, b1, either byte order); object arrays (which need pickle) are refused.
module SfMoe.Core.Npz

open System
open System.IO
open System.IO.Compression
open System.Text
open System.Text.RegularExpressions
open TorchSharp
open SfMoe.Core.Tensors

open SfMoe

let private fail (src: string) fmt = Printf.ksprintf (fun s -> raise (CheckpointException(sprintf "%s: %s" src s))) fmt

let private dtypes =
    [ "f4", torch.ScalarType.Float32, 4
      "f8", torch.ScalarType.Float64, 8
      "f2", torch.ScalarType.Float16, 2
      "i8", torch.ScalarType.Int64, 8
      "i4", torch.ScalarType.Int32, 4
      "i2", torch.ScalarType.Int16, 2
      "i1", torch.ScalarType.Int8, 1
      "u1", torch.ScalarType.Byte, 1
      "b1", torch.ScalarType.Bool, 1 ]

let private descrRx = Regex(@"'descr'\s*:\s*'([^']*)'")
let private fortranRx = Regex(@"'fortran_order'\s*:\s*(True|False)")
let private shapeRx = Regex(@"'shape'\s*:\s*\(([^)]*)\)")

/// One .npy array as a tensor (C order).
let parseNpy (src: string) (bytes: byte[]) : Tensor =
    if bytes.Length < 10 || bytes[0] <> 0x93uy || Encoding.ASCII.GetString(bytes, 1, 5) <> "NUMPY" then
        fail src "not a .npy array (bad magic)"
    let major = bytes[6]
    let hlen, start =
        match major with
        | 1uy -> int (BitConverter.ToUInt16(bytes, 8)), 10
        | 2uy | 3uy ->
            if bytes.Length < 12 then fail src "truncated .npy header"
            int (BitConverter.ToUInt32(bytes, 8)), 12
        | v -> fail src ".npy format version %d is not supported" v
    if hlen < 0 || start + hlen > bytes.Length then fail src "truncated .npy header"
    let header = (if major = 3uy then Encoding.UTF8 else Encoding.Latin1).GetString(bytes, start, hlen).Trim()
    let md, mf, ms = descrRx.Match header, fortranRx.Match header, shapeRx.Match header
    if not (header.StartsWith "{") || not md.Success || not ms.Success then fail src "unreadable .npy header %s" header
    let descr = md.Groups[1].Value
    let fortran = mf.Success && mf.Groups[1].Value = "True"
    let shape =
        ms.Groups[1].Value.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
        |> Array.map (fun s ->
            match Int64.TryParse s with
            | true, v when v >= 0L -> v
            | _ -> fail src "bad shape in .npy header %s" header)
    if descr.Length < 2 then fail src "bad dtype %s" descr
    let order, code = descr[0], descr.Substring 1
    if code = "O" then fail src "refused an object array (it would need pickle)"
    let dt, size =
        match dtypes |> List.tryFind (fun (n, _, _) -> n = code) with
        | Some(_, dt, s) -> dt, s
        | None -> fail src "dtype %s is not supported" descr
    let numel = Array.fold (*) 1L shape
    let dataStart = start + hlen
    let nbytes = numel * int64 size
    if int64 dataStart + nbytes > int64 bytes.Length then
        fail src "truncated: shape [%s] of %s needs %d bytes, the entry has %d" (String.Join(", ", shape)) descr nbytes (bytes.Length - dataStart)
    let data = Array.sub bytes dataStart (int nbytes)
    if order = '>' && size > 1 then
        for i in 0 .. size .. data.Length - 1 do
            Array.Reverse(data, i, size)
    elif order <> '<' && order <> '|' && order <> '=' && order <> '>' then fail src "bad byte order in dtype %s" descr
    let storeShape = if fortran then Array.rev shape else shape
    let t = torch.empty(storeShape, dtype = dt)
    if nbytes > 0L then t.bytes <- Span<byte>(data)
    if fortran && shape.Length > 1 then
        use tt = t
        use p = tt.permute(Array.init shape.Length (fun i -> int64 (shape.Length - 1 - i)))
        p.contiguous ()
    else t

/// Read every array of an .npz archive from `stream` (from offset 0 when it can seek): (name without ".npy", tensor)
/// in archive order; `name` (the file's path) starts every message. The caller disposes the tensors.
let read (name: string) (stream: Stream) : (string * Tensor) list =
    let zip =
        try new ZipArchive(Streams.seekable stream, ZipArchiveMode.Read, true)
        with :? InvalidDataException as e -> fail name "not a readable .npz (zip) archive, or truncated (%s)" e.Message
    use zip = zip
    let out = ResizeArray()
    try
        for e in zip.Entries do
            if e.FullName.EndsWith ".npy" then
                let bytes =
                    try
                        use s = e.Open()
                        use ms = new MemoryStream()
                        s.CopyTo ms
                        ms.ToArray()
                    with :? InvalidDataException as ex -> fail name "entry %s is corrupt or truncated (%s)" e.FullName ex.Message
                let key = e.FullName.Substring(0, e.FullName.Length - 4)
                out.Add((key, parseNpy (sprintf "%s: %s" name e.FullName) bytes))
            elif not (e.FullName.EndsWith "/") then
                fail name "entry %s is not a .npy array: not an .npz file" e.FullName
    with _ ->
        for _, t in out do t.Dispose()
        reraise ()
    if out.Count = 0 then fail name "no .npy arrays in the archive"
    List.ofSeq out
