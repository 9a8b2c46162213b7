/// PyTorch's torch.save files, read without running Python or any code in them (Pickle.load refuses every global
/// that is not a tensor-rebuild function, a storage type or a plain container):
///   * the zip format (PyTorch >= 1.6): `<archive>/data.pkl` (the pickle, storages as persistent ids
///     ('storage', torch.<Type>Storage, key, location, numel)), `<archive>/data/<key>` (raw little-endian elements),
///     `<archive>/version`, and from PyTorch 2.1 `<archive>/byteorder`;
///   * the legacy format (torch.save(..., _use_new_zipfile_serialization=False), PyTorch < 1.6 files such as
///     torchvision's older model-zoo files): consecutive pickles (magic number 0x1950a86a20f9469cfc6c, protocol
///     version 1001, system info, the object, the sorted storage keys) followed by each storage as an int64 element
///     count and its raw bytes.
/// Tensors are strided views of storages; they are copied out as contiguous CPU tensors on request. Writing produces
/// the zip format with an OrderedDict of tensors, which torch.load reads and load_state_dict accepts.
/// The codec works on streams; the host opens the files and passes each call a name for messages (the file's path).
module SfMoe.Core.TorchFile

open System
open System.Collections.Generic
open System.IO
open System.IO.Compression
open System.Numerics
open TorchSharp
open SfMoe.Core.Tensors
open SfMoe.Core.Pickle
open SfMoe

let private fail (name: string) fmt = Printf.ksprintf (fun s -> raise (CheckpointException(sprintf "%s: %s" name s))) fmt

/// Turns a persistent id ('storage', type, key, location, numel[, view]) into a storage.
let private storageOf (name: string) (pid: PyValue) : PyValue =
    match pid with
    | PyTuple items when items.Length >= 5 && items[0] = PyStr "storage" ->
        let typeName =
            match items[1] with
            | PyGlobal g when g.StartsWith "storage:" -> g.Substring 8
            | v -> fail name "storage type %s is not supported" (describe v)
        let key =
            match items[2] with
            | PyStr k -> k
            | v -> fail name "storage key is %s" (describe v)
        let location =
            match items[3] with
            | PyStr l -> l
            | _ -> "cpu"
        let numel =
            match items[4] with
            | PyInt n when n >= BigInteger.Zero && n < BigInteger Int64.MaxValue -> int64 n
            | v -> fail name "storage %s has size %s" key (describe v)
        if items.Length > 5 && items[5] <> PyNone then fail name "storage views (legacy view metadata) are not supported"
        PyStorage { Key = key; DType = storageTypes[typeName]; Numel = numel; Location = location }
    | PyTuple items when items.Length > 0 && items[0] = PyStr "module" ->
        fail name "the file holds a pickled nn.Module class (torch.save(model)); save model.state_dict() instead"
    | v -> fail name "unsupported persistent id %s" (describe v)

/// A read torch.save file: its root object and access to its tensors. Dispose it to free the storages; the stream it
/// was read from must stay open until then (storages are read on request).
type Checkpoint(name: string, root: PyValue, storageBytes: StorageRef -> byte[], onDispose: unit -> unit) =
    let cache = Dictionary<string, Tensor>()
    /// The name given to `read` (the file's path), which starts every message.
    member _.Name = name
    member _.Root = root

    /// The tensor as a contiguous CPU tensor (a copy; the caller disposes it).
    member _.Tensor(t: TensorRef) : Tensor =
        let s = t.Storage
        let storage =
            match cache.TryGetValue s.Key with
            | true, x -> x
            | _ ->
                let bytes = storageBytes s
                let need = s.Numel * int64 (elementSize s.DType)
                if int64 bytes.Length < need then
                    fail name "storage %s holds %d bytes but its %d elements of %A need %d (truncated file?)" s.Key bytes.Length s.Numel s.DType need
                let x = torch.empty([| s.Numel |], dtype = s.DType)
                if need > 0L then x.bytes <- Span<byte>(bytes, 0, int need)
                cache[s.Key] <- x
                x
        if t.Size |> Array.exists (fun d -> d < 0L) || t.Stride |> Array.exists (fun d -> d < 0L) || t.Offset < 0L then
            fail name "tensor of storage %s has a negative size, stride or offset" s.Key
        let extent =
            if t.Size |> Array.exists (fun d -> d = 0L) then 0L
            else t.Offset + 1L + Array.fold2 (fun acc n st -> acc + (n - 1L) * st) 0L t.Size t.Stride
        if extent > s.Numel then
            fail name "a tensor of shape [%s] at offset %d needs %d elements of storage %s, which has %d (corrupt file?)"
                (String.Join(", ", t.Size)) t.Offset extent s.Key s.Numel
        if t.Size |> Array.exists (fun d -> d = 0L) then torch.empty(t.Size, dtype = s.DType)
        else
            use view = storage.as_strided(t.Size, t.Stride, t.Offset)
            view.contiguous().clone()

    interface IDisposable with
        member _.Dispose() =
            for KeyValue(_, t) in cache do t.Dispose()
            cache.Clear()
            onDispose ()

let private zipMagic = [| 0x50uy; 0x4buy; 0x03uy; 0x04uy |]

/// True when the content starts like a zip archive (torch.save zip format, .npz).
let isZip (stream: Stream) = Streams.head (Streams.seekable stream) 4 = zipMagic

let private readEntry (name: string) (e: ZipArchiveEntry) : byte[] =
    try
        use s = e.Open()
        use ms = new MemoryStream(int e.Length)
        s.CopyTo ms
        let b = ms.ToArray()
        if int64 b.Length <> e.Length then fail name "entry %s is truncated" e.FullName
        b
    with
    | :? InvalidDataException as ex -> fail name "entry %s is corrupt or truncated (%s)" e.FullName ex.Message

let private openZip (name: string) (stream: Stream) : ZipArchive =
    try new ZipArchive(stream, ZipArchiveMode.Read, true)
    with
    | :? InvalidDataException as e -> fail name "not a readable zip archive, or truncated (%s)" e.Message

let private readZip (name: string) (stream: Stream) : Checkpoint =
    let zip = openZip name stream
    try
        let pkl =
            zip.Entries
            |> Seq.tryFind (fun e -> e.FullName = "data.pkl" || e.FullName.EndsWith "/data.pkl")
            |> Option.defaultWith (fun () -> fail name "a zip archive without data.pkl: not a torch.save file")
        let prefix = pkl.FullName.Substring(0, pkl.FullName.Length - "data.pkl".Length)
        match zip.GetEntry(prefix + "byteorder") with
        | null -> ()
        | e ->
            let order = Text.Encoding.ASCII.GetString(readEntry name e).Trim()
            if order <> "little" then fail name "byte order %s is not supported (little-endian only)" order
        let data = readEntry name pkl
        let root, _ = Pickle.load (Streams.fileName name) data 0 (storageOf name)
        let bytesOf (s: StorageRef) =
            match zip.GetEntry(prefix + "data/" + s.Key) with
            | null -> fail name "storage %s is missing (data/%s; truncated file?)" s.Key s.Key
            | e -> readEntry name e
        new Checkpoint(name, root, bytesOf, fun () -> zip.Dispose())
    with e ->
        zip.Dispose()
        reraise ()

/// The legacy magic number (a pickled int) and protocol version.
let private legacyMagic = BigInteger.Parse("119547037146038801333356")
let private legacyProtocol = BigInteger 1001

let private readLegacy (name: string) (stream: Stream) : Checkpoint =
    let data = Streams.allBytes stream
    let file = Streams.fileName name
    let noPid (_: PyValue) : PyValue = fail name "unexpected persistent id in the header of a legacy torch.save file"
    let magic, p1 = Pickle.load file data 0 noPid
    if magic <> PyInt legacyMagic then
        fail name "a pickle that is not a torch.save file (no PyTorch magic number); only torch.save files are read"
    let proto, p2 = Pickle.load file data p1 noPid
    if proto <> PyInt legacyProtocol then fail name "legacy torch.save protocol %s is not supported (1001)" (describe proto)
    let sysInfo, p3 = Pickle.load file data p2 noPid
    match sysInfo with
    | PyDict d ->
        match d.TryFind "little_endian" with
        | Some(PyBool false) -> fail name "the file was written on a big-endian machine: not supported"
        | _ -> ()
    | _ -> ()
    let storages = Dictionary<string, StorageRef>()
    let pid v =
        let s = storageOf name v
        match s with
        | PyStorage st -> storages[st.Key] <- st
        | _ -> ()
        s
    let root, p4 = Pickle.load file data p3 pid
    let keys, p5 = Pickle.load file data p4 noPid
    let keys =
        match keys with
        | PyList ks -> [ for k in ks -> match k with PyStr s -> s | v -> fail name "storage key %s" (describe v) ]
        | v -> fail name "expected the list of storage keys, found %s" (describe v)
    // Each storage: int64 element count, then its bytes.
    let offsets = Dictionary<string, int64 * int64>()
    let mutable pos = int64 p5
    for k in keys do
        if pos + 8L > int64 data.Length then fail name "truncated: storage %s is missing" k
        let n = BitConverter.ToInt64(data, int pos)
        let st =
            match storages.TryGetValue k with
            | true, s -> s
            | _ -> fail name "storage %s is listed but no tensor uses it" k
        let bytes = n * int64 (elementSize st.DType)
        if n < 0L || pos + 8L + bytes > int64 data.Length then fail name "truncated: storage %s needs %d bytes" k bytes
        offsets[k] <- (pos + 8L, bytes)
        pos <- pos + 8L + bytes
    let bytesOf (s: StorageRef) =
        match offsets.TryGetValue s.Key with
        | true, (o, n) -> Array.sub data (int o) (int n)
        | _ -> fail name "storage %s has no data (truncated file?)" s.Key
    new Checkpoint(name, root, bytesOf, ignore)

/// Read a torch.save file (zip or legacy format) from `stream` (from offset 0 when it can seek); `name` (the file's
/// path) starts every message. The stream must stay open until the checkpoint is disposed.
let read (name: string) (stream: Stream) : Checkpoint =
    let stream = Streams.seekable stream
    let head = Streams.head stream 262
    if head.Length = 0 then fail name "empty file"
    // Opcodes a pickle can start with: PROTO (protocols 2-5), or protocol 0/1 openers (MARK, GLOBAL, INST, EMPTY_*,
    // constants). Anything else is not a pickle.
    let pickleStart = set [ 0x80uy; byte '('; byte 'c'; byte 'i'; byte '}'; byte ']'; byte ')'; byte 'N'; byte 'I'; byte 'J'; byte 'K'; byte 'L'; byte 'S'; byte 'V'; byte 'X'; byte 'U'; byte 'T'; byte 'F'; byte 'G' ]
    if head.Length >= 4 && head[0..3] = zipMagic then readZip name stream
    elif head.Length >= 262 && Text.Encoding.ASCII.GetString(head, 257, 5) = "ustar" then
        fail name "PyTorch's pre-1.0 tar checkpoint format is not supported; re-save it with a recent torch.save"
    elif pickleStart.Contains head[0] then readLegacy name stream
    else fail name "not a torch.save file (neither the zip format nor a pickle)"

/// The archive folder torch.save names after the file: its name without folder and extension, other characters than
/// letters, digits, '_' and '-' replaced by '_'.
let private archiveName (name: string) =
    let file = Streams.fileName name
    let dot = file.LastIndexOf '.'
    let stem = if dot < 0 then file else file.Substring(0, dot)
    let clean = String(stem |> Seq.map (fun c -> if Char.IsLetterOrDigit c || c = '_' || c = '-' then c else '_') |> Array.ofSeq)
    if clean = "" then "archive" else clean

/// Write tensors to `stream` as torch.save(OrderedDict) would (zip format, the archive folder named after `name`, the
/// file's path, which also starts every message); with `wrap`, as torch.save({wrap: OrderedDict}) (DeiT's
/// {'model': state_dict}). Every tensor is checked before the first byte is written.
let writeWrapped (wrap: string option) (name: string) (tensors: (string * Tensor) list) (stream: Stream) : unit =
    let dup = tensors |> List.countBy fst |> List.tryFind (fun (_, n) -> n > 1)
    match dup with
    | Some(n, _) -> fail name "tensor name %s appears twice" n
    | None -> ()
    let archive = archiveName name
    let entries =
        tensors
        |> List.mapi (fun i (key, t) ->
            match storageTypeOf t.dtype with
            | None -> fail name "tensor %s: element type %A cannot be written" key t.dtype
            | Some _ -> key, string i, t.dtype, t.shape, t.numel ())
    let pickle =
        use w = new Pickle.Writer()
        match wrap with
        | Some k -> w.StateDict(entries, k)
        | None -> w.StateDict entries
    use zip = new ZipArchive(stream, ZipArchiveMode.Create, true)
    let add (entry: string) (bytes: byte[]) =
        let e = zip.CreateEntry(archive + "/" + entry, CompressionLevel.NoCompression)
        use s = e.Open()
        s.Write(bytes, 0, bytes.Length)
    add "data.pkl" pickle
    add "byteorder" (Text.Encoding.ASCII.GetBytes "little")
    for (_, t), (_, key, _, _, _) in List.zip tensors entries do
        use c = t.detach().cpu().contiguous()
        add ("data/" + key) (if c.numel () = 0L then [||] else c.bytes.ToArray())
    add "version" (Text.Encoding.ASCII.GetBytes "3\n")

/// Write tensors to `stream` as torch.save(OrderedDict) would (zip format); `name` as in `writeWrapped`.
let write (name: string) (tensors: (string * Tensor) list) (stream: Stream) : unit = writeWrapped None name tensors stream
