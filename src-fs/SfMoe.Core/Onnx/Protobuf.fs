/// A minimal protocol-buffers writer (wire format only, https://protobuf.dev/programming-guides/encoding/): a message
/// is a list of fields; nested messages are length-prefixed, so sizes are computed before writing and the file streams
/// to its output. Repeated scalars are written unpacked (one tag per value), which every proto2 parser accepts.
module SfMoe.Core.Onnx.Protobuf

open System
open System.IO

type Field =
    /// Wire type 0: int32, int64, enums, bool.
    | Varint of field: int * value: uint64
    /// Wire type 5: float.
    | Fixed32 of field: int * value: uint32
    /// Wire type 2: strings, bytes.
    | Bytes of field: int * value: byte[]
    /// Wire type 2: a nested message.
    | Message of field: int * Field list

let int64Field (n: int) (v: int64) = Varint(n, uint64 v)
let stringField (n: int) (s: string) = Bytes(n, Text.Encoding.UTF8.GetBytes s)
let floatField (n: int) (f: float32) = Fixed32(n, BitConverter.SingleToUInt32Bits f)

let varintSize (v: uint64) =
    let mutable n = 1
    let mutable x = v >>> 7
    while x <> 0UL do
        n <- n + 1
        x <- x >>> 7
    n

let private tag (n: int) (wire: int) = uint64 ((n <<< 3) ||| wire)

let rec private fieldSize (f: Field) : int64 =
    match f with
    | Varint(n, v) -> int64 (varintSize (tag n 0) + varintSize v)
    | Fixed32(n, _) -> int64 (varintSize (tag n 5) + 4)
    | Bytes(n, b) -> int64 (varintSize (tag n 2) + varintSize (uint64 b.Length) + b.Length)
    | Message(n, fs) ->
        let s = size fs
        int64 (varintSize (tag n 2)) + int64 (varintSize (uint64 s)) + s

/// Encoded size of a message's fields in bytes.
and size (fields: Field list) : int64 = fields |> List.sumBy fieldSize

let private writeVarint (s: Stream) (v: uint64) =
    let mutable x = v
    while x >= 0x80UL do
        s.WriteByte(byte (x &&& 0x7FUL) ||| 0x80uy)
        x <- x >>> 7
    s.WriteByte(byte x)

let rec private writeField (s: Stream) (f: Field) =
    match f with
    | Varint(n, v) ->
        writeVarint s (tag n 0)
        writeVarint s v
    | Fixed32(n, v) ->
        writeVarint s (tag n 5)
        let b = BitConverter.GetBytes v
        if not BitConverter.IsLittleEndian then Array.Reverse b
        s.Write(b, 0, 4)
    | Bytes(n, b) ->
        writeVarint s (tag n 2)
        writeVarint s (uint64 b.Length)
        s.Write(b, 0, b.Length)
    | Message(n, fs) ->
        writeVarint s (tag n 2)
        writeVarint s (uint64 (size fs))
        write s fs

/// Write a message's fields to a stream (the top-level message has no tag or length).
and write (s: Stream) (fields: Field list) =
    for f in fields do writeField s f
