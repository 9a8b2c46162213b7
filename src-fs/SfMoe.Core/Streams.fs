/// Helpers of the format codecs (SafeTensors, TorchFile, Npz, the import readers), which read and write streams: the
/// host opens the files, owns the single atomic writer, and passes each codec the stream and a name for its messages
/// (the file's path, so that every error names the file at fault).
module internal SfMoe.Core.Streams

open System
open System.IO

/// The stream's content, seekable: the stream itself when it can seek (read from offset 0), else its remaining bytes
/// copied into memory.
let seekable (s: Stream) : Stream =
    if s.CanSeek then s
    else
        let ms = new MemoryStream()
        s.CopyTo ms
        ms.Position <- 0L
        ms :> Stream

/// Up to `n` bytes from the start of a seekable stream, which is left at offset 0.
let head (s: Stream) (n: int) : byte[] =
    s.Position <- 0L
    let b = Array.zeroCreate<byte> n
    let k = s.ReadAtLeast(b.AsSpan(), n, false)
    s.Position <- 0L
    if k = n then b else Array.sub b 0 k

/// Every byte of a seekable stream, from offset 0.
let allBytes (s: Stream) : byte[] =
    s.Position <- 0L
    use ms = new MemoryStream(int (max 0L (min s.Length (int64 Int32.MaxValue))))
    s.CopyTo ms
    ms.ToArray()

/// The last segment of a name that is a path (the file name), for messages that name the file only.
let fileName (name: string) =
    let i = name.LastIndexOfAny [| '/'; '\\' |]
    if i < 0 then name else name.Substring(i + 1)
