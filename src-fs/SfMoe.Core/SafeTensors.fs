/// The safetensors file format (8-byte little-endian header length, JSON header with dtype/shape/offsets and
/// an optional "__metadata__" string map, then raw little-endian data), read and written here because the
/// checkpoint format keeps the model config in that metadata (TorchSharp.PyBridge's safetensors API has no
/// access to it). The codec works on streams: the host opens the file (or gives its atomic writer's stream) and passes
/// a name for messages, the file's path. Reading validates everything and names the file and key at fault; writing
/// checks every tensor before the first byte is written.
module SfMoe.Core.SafeTensors

open System
open System.IO
open System.Text
open System.Text.Json
open System.Runtime.InteropServices
open TorchSharp
open SfMoe.Core.Tensors
open SfMoe

let private fail (name: string) fmt = Printf.ksprintf (fun s -> raise (CheckpointException(sprintf "%s: %s" name s))) fmt

let private dtypes =
    [ "F32", torch.ScalarType.Float32, 4
      "F64", torch.ScalarType.Float64, 8
      "F16", torch.ScalarType.Float16, 2
      "BF16", torch.ScalarType.BFloat16, 2
      "I64", torch.ScalarType.Int64, 8
      "I32", torch.ScalarType.Int32, 4
      "I16", torch.ScalarType.Int16, 2
      "I8", torch.ScalarType.Int8, 1
      "U8", torch.ScalarType.Byte, 1
      "BOOL", torch.ScalarType.Bool, 1 ]

/// A file's tensors (in header order) and metadata.
type Contents =
    { Tensors: (string * Tensor) list
      Metadata: Map<string, string> }
    interface IDisposable with
        member this.Dispose() =
            for _, t in this.Tensors do t.Dispose()

    member this.Find(name: string) = this.Tensors |> List.tryFind (fun (n, _) -> n = name) |> Option.map snd
    member this.Item(name: string) =
        match this.Find name with
        | Some t -> t
        | None -> raise (CheckpointException(sprintf "no tensor named %s" name))

let private tensorOfBytes (bytes: byte[]) (dtype: torch.ScalarType) (shape: int64[]) : Tensor =
    let t = torch.empty(shape, dtype = dtype)
    if bytes.Length > 0 then t.bytes <- Span<byte>(bytes)
    t

/// Read a file's content from `stream` (from offset 0 when it can seek); `name` (the file's path) starts every
/// message. Fails on a truncated file, a malformed header, unknown dtypes, or data offsets that do not match the shape.
let read (name: string) (stream: Stream) : Contents =
    let fs = Streams.seekable stream
    fs.Position <- 0L
    let len = fs.Length
    if len < 8L then fail name "not a safetensors file (shorter than its 8-byte header length)"
    let lenBuf = Array.zeroCreate<byte> 8
    fs.ReadExactly(lenBuf, 0, 8)
    let hlen = BitConverter.ToUInt64(lenBuf, 0)
    if hlen = 0UL || hlen > uint64 (len - 8L) || hlen > 100_000_000UL then
        fail name "not a safetensors file or truncated (header length %d, file length %d)" hlen len
    let hbuf = Array.zeroCreate<byte> (int hlen)
    fs.ReadExactly(hbuf, 0, int hlen)
    let doc =
        try JsonDocument.Parse(hbuf.AsMemory())
        with e -> fail name "header is not valid JSON (%s)" e.Message
    use doc = doc
    if doc.RootElement.ValueKind <> JsonValueKind.Object then fail name "header is not a JSON object"
    let dataStart = 8L + int64 hlen
    let dataLen = len - dataStart
    let mutable meta = Map.empty
    let entries = ResizeArray()
    for prop in doc.RootElement.EnumerateObject() do
        if prop.Name = "__metadata__" then
            if prop.Value.ValueKind <> JsonValueKind.Object then fail name "__metadata__ must be an object of strings"
            for m in prop.Value.EnumerateObject() do
                if m.Value.ValueKind <> JsonValueKind.String then fail name "__metadata__.%s must be a string" m.Name
                meta <- meta.Add(m.Name, m.Value.GetString())
        else
            let v = prop.Value
            let get (k: string) =
                match v.TryGetProperty k with
                | true, x -> x
                | _ -> fail name "tensor %s: header entry lacks \"%s\"" prop.Name k
            let dtName = (get "dtype").GetString()
            let dt, size =
                match dtypes |> List.tryFind (fun (n, _, _) -> n = dtName) with
                | Some(_, dt, s) -> dt, s
                | None -> fail name "tensor %s: unsupported dtype %s" prop.Name dtName
            let shape = [| for d in (get "shape").EnumerateArray() -> d.GetInt64() |]
            if shape |> Array.exists (fun d -> d < 0L) then fail name "tensor %s: negative dimension in shape" prop.Name
            let offs = [| for d in (get "data_offsets").EnumerateArray() -> d.GetInt64() |]
            if offs.Length <> 2 || offs[0] < 0L || offs[1] < offs[0] then fail name "tensor %s: bad data_offsets" prop.Name
            let expected = (Array.fold (*) 1L shape) * int64 size
            if offs[1] - offs[0] <> expected then
                fail name "tensor %s: data_offsets span %d bytes but shape %A of %s needs %d" prop.Name (offs[1] - offs[0]) shape dtName expected
            if offs[1] > dataLen then
                fail name "tensor %s: data ends at byte %d but the file has only %d data bytes (truncated?)" prop.Name offs[1] dataLen
            entries.Add((prop.Name, dt, shape, offs[0], offs[1]))
    let tensors =
        [ for key, dt, shape, b, e in entries do
              let buf = Array.zeroCreate<byte> (int (e - b))
              fs.Seek(dataStart + b, SeekOrigin.Begin) |> ignore
              fs.ReadExactly(buf, 0, buf.Length)
              yield key, tensorOfBytes buf dt shape ]
    { Tensors = tensors; Metadata = meta }

let private bytesOf (t: Tensor) : byte[] =
    use c = t.detach().cpu().contiguous()
    if c.numel () = 0L then [||] else c.bytes.ToArray()

/// Write tensors and metadata to `stream`; `name` (the file's path) starts every message. Tensor names must be
/// unique. Every tensor is checked before the first byte is written.
let write (name: string) (metadata: Map<string, string>) (tensors: (string * Tensor) list) (stream: Stream) : unit =
    let dup = tensors |> List.countBy fst |> List.tryFind (fun (_, n) -> n > 1)
    match dup with
    | Some(n, _) -> fail name "tensor name %s appears twice" n
    | None -> ()
    let blobs =
        tensors
        |> List.map (fun (n, t) ->
            let dtName, _, _ =
                match dtypes |> List.tryFind (fun (_, dt, _) -> dt = t.dtype) with
                | Some x -> x
                | None -> fail name "tensor %s: dtype %A cannot be written" n t.dtype
            n, dtName, t.shape, bytesOf t)
    use ms = new MemoryStream()
    use w = new Utf8JsonWriter(ms)
    w.WriteStartObject()
    if not metadata.IsEmpty then
        w.WriteStartObject "__metadata__"
        for KeyValue(k, v) in metadata do
            w.WriteString(k, v)
        w.WriteEndObject()
    let mutable off = 0L
    for n, dt, shape, bytes in blobs do
        w.WriteStartObject n
        w.WriteString("dtype", dt)
        w.WriteStartArray "shape"
        for d in shape do w.WriteNumberValue d
        w.WriteEndArray()
        w.WriteStartArray "data_offsets"
        w.WriteNumberValue off
        w.WriteNumberValue(off + int64 bytes.Length)
        w.WriteEndArray()
        w.WriteEndObject()
        off <- off + int64 bytes.Length
    w.WriteEndObject()
    w.Flush()
    let header = ms.ToArray()
    let pad = (8 - header.Length % 8) % 8
    let header = Array.append header (Array.create pad (byte ' '))
    stream.Write(BitConverter.GetBytes(uint64 header.Length), 0, 8)
    stream.Write(header, 0, header.Length)
    for _, _, _, bytes in blobs do
        stream.Write(bytes, 0, bytes.Length)
