/// ONNX's messages (onnx/onnx.proto, IR version 8+) as protobuf fields: tensors, attributes, nodes, value infos, the
/// graph and the model with its metadata. Field numbers are those of the ONNX specification.
module SfMoe.Core.Onnx.Proto

open System
open System.Runtime.InteropServices
open SfMoe.Core.Onnx.Protobuf

/// TensorProto.DataType values used here.
module DataType =
    let float32 = 1
    let uint8 = 2
    let int64 = 7
    let bool = 9
    let float64 = 11

/// A tensor value: an initializer or a tensor attribute (little-endian raw data).
type TensorValue =
    { Dims: int64[]
      DataType: int
      Raw: byte[] }

module TensorValue =
    let private bytes<'T when 'T: unmanaged and 'T: struct and 'T :> ValueType and 'T: (new: unit -> 'T)> (xs: 'T[]) =
        if not BitConverter.IsLittleEndian then raise (PlatformNotSupportedException "ONNX raw tensor data is little-endian")
        MemoryMarshal.AsBytes(ReadOnlySpan<'T>(xs)).ToArray()

    let private check (dims: int64[]) (n: int) =
        let count = Array.fold (*) 1L dims
        if count <> int64 n then invalidArg "dims" (sprintf "%d values do not fill dims %A" n dims)

    let float32s (dims: int64[]) (xs: float32[]) =
        check dims xs.Length
        { Dims = dims; DataType = DataType.float32; Raw = bytes xs }

    let int64s (dims: int64[]) (xs: int64[]) =
        check dims xs.Length
        { Dims = dims; DataType = DataType.int64; Raw = bytes xs }

    let float64s (dims: int64[]) (xs: float[]) =
        check dims xs.Length
        { Dims = dims; DataType = DataType.float64; Raw = bytes xs }

    let bools (dims: int64[]) (xs: bool[]) =
        check dims xs.Length
        { Dims = dims; DataType = DataType.bool; Raw = xs |> Array.map (fun b -> if b then 1uy else 0uy) }

/// TensorProto: dims = 1, data_type = 2, name = 8, raw_data = 9.
let tensor (name: string) (t: TensorValue) : Field list =
    [ for d in t.Dims do
          yield int64Field 1 d
      yield int64Field 2 (int64 t.DataType)
      yield stringField 8 name
      yield Bytes(9, t.Raw) ]

/// The value of a node attribute.
type AttrValue =
    | AFloat of float32
    | AInt of int64
    | AString of string
    | ATensor of TensorValue
    | AInts of int64 list

/// AttributeProto: name = 1, f = 2, i = 3, s = 4, t = 5, ints = 8, type = 20 (FLOAT 1, INT 2, STRING 3, TENSOR 4,
/// INTS 7).
let attribute (name: string) (v: AttrValue) : Field list =
    [ yield stringField 1 name
      match v with
      | AFloat f ->
          yield floatField 2 f
          yield int64Field 20 1L
      | AInt i ->
          yield int64Field 3 i
          yield int64Field 20 2L
      | AString s ->
          yield stringField 4 s
          yield int64Field 20 3L
      | ATensor t ->
          yield Message(5, tensor "" t)
          yield int64Field 20 4L
      | AInts xs ->
          for x in xs do
              yield int64Field 8 x
          yield int64Field 20 7L ]

/// NodeProto: input = 1, output = 2, name = 3, op_type = 4, attribute = 5, domain = 7.
let node (opType: string) (name: string) (inputs: string list) (outputs: string list) (attrs: (string * AttrValue) list) : Field list =
    [ for i in inputs do
          yield stringField 1 i
      for o in outputs do
          yield stringField 2 o
      yield stringField 3 name
      yield stringField 4 opType
      for n, v in attrs do
          yield Message(5, attribute n v) ]

/// A tensor dimension of a graph input or output: a number or a named symbolic size.
type Dim =
    | Known of int64
    | Symbolic of string

/// ValueInfoProto (name = 1, type = 2) of a tensor: TypeProto.tensor_type = 1 -> elem_type = 1, shape = 2 ->
/// TensorShapeProto.dim = 1 -> dim_value = 1 | dim_param = 2.
let valueInfo (name: string) (elemType: int) (dims: Dim list) : Field list =
    let dim d =
        match d with
        | Known v -> Message(1, [ int64Field 1 v ])
        | Symbolic s -> Message(1, [ stringField 2 s ])
    [ stringField 1 name
      Message(2, [ Message(1, [ int64Field 1 (int64 elemType); Message(2, [ for d in dims -> dim d ]) ]) ]) ]

/// GraphProto: node = 1, name = 2, initializer = 5, doc_string = 10, input = 11, output = 12.
let graph (name: string) (nodes: Field list seq) (initializers: (string * TensorValue) seq) (inputs: Field list list) (outputs: Field list list) : Field list =
    [ for n in nodes do
          yield Message(1, n)
      yield stringField 2 name
      for n, t in initializers do
          yield Message(5, tensor n t)
      for i in inputs do
          yield Message(11, i)
      for o in outputs do
          yield Message(12, o) ]

/// The IR version that goes with an opset of the default domain (onnx/docs/Versioning.md).
let irVersion (opset: int) =
    if opset <= 18 then 8L
    elif opset <= 20 then 9L
    else 10L

/// ModelProto: ir_version = 1, producer_name = 2, producer_version = 3, doc_string = 6, graph = 7,
/// opset_import = 8 (OperatorSetIdProto: domain = 1, version = 2), metadata_props = 14 (key = 1, value = 2).
let model (opset: int) (producer: string) (producerVersion: string) (doc: string) (graph: Field list) (metadata: (string * string) list) : Field list =
    [ yield int64Field 1 (irVersion opset)
      yield stringField 2 producer
      yield stringField 3 producerVersion
      yield stringField 6 doc
      yield Message(7, graph)
      yield Message(8, [ stringField 1 ""; int64Field 2 (int64 opset) ])
      for k, v in metadata do
          yield Message(14, [ stringField 1 k; stringField 2 v ]) ]
