/// A safe reader (and a small writer) for Python pickles, the payload of PyTorch's torch.save files. The reader is a
/// stack machine over the opcodes of protocols 0-5 that torch.save and numpy emit; it never runs code and never
/// imports anything. A pickle names the functions that rebuild its objects (GLOBAL / STACK_GLOBAL); only these are
/// accepted, each implemented here as plain data construction:
///   torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter(_with_state)  -> a tensor view (TensorRef)
///   torch.{Float,Double,Half,BFloat16,Long,Int,Short,Char,Byte,Bool}Storage (also torch.cuda.*) -> storage types
///   collections.OrderedDict, torch.Size                                                 -> dict / tuple
///   numpy.core.multiarray.scalar, numpy.dtype, _codecs.encode                           -> a number (numpy scalar)
/// Any other global (argparse.Namespace, os.system, builtins.eval, ...) stops the read at that opcode with an error
/// naming it, before anything else happens. Values are None, bools, integers, floats, strings, tuples, lists, dicts
/// (ordered or not) and tensors. Truncated or corrupt data is an error naming the source.
module SfMoe.Core.Pickle

open System
open System.Collections.Generic
open System.IO
open System.Numerics
open System.Text
open TorchSharp
open SfMoe

/// A typed storage of a torch.save file: its key (file name in the archive), element type and length.
type StorageRef =
    { Key: string
      DType: torch.ScalarType
      /// Elements (of DType).
      Numel: int64
      /// "cpu", "cuda:0", ... (the device it was saved from; tensors are read onto the CPU).
      Location: string }

/// A tensor as torch.save describes it: a strided view of a storage.
type TensorRef =
    { Storage: StorageRef
      Offset: int64
      Size: int64[]
      Stride: int64[] }

/// A Python value as read from a pickle.
[<CustomEquality; NoComparison>]
type PyValue =
    | PyNone
    | PyBool of bool
    | PyInt of BigInteger
    | PyFloat of float
    | PyStr of string
    | PyBytes of byte[]
    | PyTuple of PyValue[]
    | PyList of ResizeArray<PyValue>
    | PyDict of PyDictObj
    | PyTensor of TensorRef
    /// A storage (from a persistent id), until a _rebuild_tensor call makes a tensor of it.
    | PyStorage of StorageRef
    /// An accepted global (only ever on the stack, as the callable of REDUCE / NEWOBJ or a storage type).
    | PyGlobal of string
    /// A numpy dtype while a numpy scalar is rebuilt: (code such as "f8", byte order).
    | PyDtype of string * string
    override this.Equals(o) =
        match o with
        | :? PyValue as v ->
            match this, v with
            | PyNone, PyNone -> true
            | PyBool a, PyBool b -> a = b
            | PyInt a, PyInt b -> a = b
            | PyFloat a, PyFloat b -> a = b
            | PyStr a, PyStr b -> a = b
            | PyBytes a, PyBytes b -> a = b
            | PyTuple a, PyTuple b -> a = b
            | PyGlobal a, PyGlobal b -> a = b
            | _ -> obj.ReferenceEquals(this, v)
        | _ -> false
    override this.GetHashCode() =
        match this with
        | PyStr s -> s.GetHashCode()
        | PyInt i -> i.GetHashCode()
        | PyBool b -> b.GetHashCode()
        | PyFloat f -> f.GetHashCode()
        | PyTuple t -> t.Length
        | _ -> 0

/// A Python dict or collections.OrderedDict: insertion-ordered items (both keep insertion order since Python 3.7).
and PyDictObj(ordered: bool) =
    let items = ResizeArray<PyValue * PyValue>()
    let index = Dictionary<PyValue, int>()
    member _.Ordered = ordered
    member _.Items = items :> IReadOnlyList<PyValue * PyValue>
    member _.Count = items.Count
    member _.Set(k: PyValue, v: PyValue) =
        match index.TryGetValue k with
        | true, i -> items[i] <- (k, v)
        | _ ->
            index[k] <- items.Count
            items.Add((k, v))
    member _.TryFind(k: PyValue) =
        match index.TryGetValue k with
        | true, i -> Some(snd items[i])
        | _ -> None
    member this.TryFind(k: string) = this.TryFind(PyStr k)
    member _.Keys = items |> Seq.map fst
    /// Attributes set by BUILD (e.g. a state dict's `_metadata`); kept, never interpreted.
    member val Attributes: (PyValue * PyValue) list = [] with get, set

/// How a Python value is described in messages.
let rec describe (v: PyValue) =
    match v with
    | PyNone -> "None"
    | PyBool _ -> "bool"
    | PyInt _ -> "int"
    | PyFloat _ -> "float"
    | PyStr _ -> "str"
    | PyBytes _ -> "bytes"
    | PyTuple _ -> "tuple"
    | PyList _ -> "list"
    | PyDict d -> if d.Ordered then "OrderedDict" else "dict"
    | PyTensor _ -> "tensor"
    | PyStorage _ -> "storage"
    | PyGlobal g -> g
    | PyDtype(c, _) -> "numpy.dtype " + c

/// Storage classes by name (torch.FloatStorage, ...), with their element types.
let storageTypes =
    dict
        [ "DoubleStorage", torch.ScalarType.Float64
          "FloatStorage", torch.ScalarType.Float32
          "HalfStorage", torch.ScalarType.Float16
          "BFloat16Storage", torch.ScalarType.BFloat16
          "LongStorage", torch.ScalarType.Int64
          "IntStorage", torch.ScalarType.Int32
          "ShortStorage", torch.ScalarType.Int16
          "CharStorage", torch.ScalarType.Int8
          "ByteStorage", torch.ScalarType.Byte
          "BoolStorage", torch.ScalarType.Bool ]

/// The storage class of an element type (for writing).
let storageTypeOf (dt: torch.ScalarType) =
    storageTypes |> Seq.tryFind (fun kv -> kv.Value = dt) |> Option.map (fun kv -> kv.Key)

let elementSize (dt: torch.ScalarType) =
    match dt with
    | torch.ScalarType.Float64 | torch.ScalarType.Int64 -> 8
    | torch.ScalarType.Float32 | torch.ScalarType.Int32 -> 4
    | torch.ScalarType.Float16 | torch.ScalarType.BFloat16 | torch.ScalarType.Int16 -> 2
    | torch.ScalarType.Int8 | torch.ScalarType.Byte | torch.ScalarType.Bool -> 1
    | _ -> raise (CheckpointException(sprintf "unsupported element type %A" dt))

/// The accepted globals ("module.name"); storage types are accepted separately.
let private allowed =
    set [ "torch._utils._rebuild_tensor_v2"
          "torch._utils._rebuild_tensor"
          "torch._utils._rebuild_parameter"
          "torch._utils._rebuild_parameter_with_state"
          "collections.OrderedDict"
          "torch.Size"
          "numpy.core.multiarray.scalar"
          "numpy._core.multiarray.scalar"
          "numpy.dtype"
          "_codecs.encode" ]

let private storageGlobal (name: string) =
    let short =
        if name.StartsWith "torch.cuda." then name.Substring 11
        elif name.StartsWith "torch." then name.Substring 6
        else ""
    if short <> "" && storageTypes.ContainsKey short then Some short else None

/// Persistent references (BINPERSID): the caller turns the pid tuple into a value (torch: a storage).
type PersistentLoad = PyValue -> PyValue

let private int64Of (what: string) (v: PyValue) =
    match v with
    | PyInt i when i >= BigInteger Int64.MinValue && i <= BigInteger Int64.MaxValue -> int64 i
    | PyBool b -> if b then 1L else 0L
    | _ -> raise (CheckpointException(sprintf "%s: expected an integer, found %s" what (describe v)))

let private intsOf (what: string) (v: PyValue) =
    match v with
    | PyTuple xs -> xs |> Array.map (int64Of what)
    | PyList xs -> xs.ToArray() |> Array.map (int64Of what)
    | _ -> raise (CheckpointException(sprintf "%s: expected a tuple of integers, found %s" what (describe v)))

/// A numpy scalar from its dtype and raw bytes (numpy.core.multiarray.scalar): a number, nothing else.
let private numpyScalar (src: string) (dtype: PyValue) (data: PyValue) : PyValue =
    let code, order =
        match dtype with
        | PyDtype(c, o) -> c, o
        | v -> raise (CheckpointException(sprintf "%s: numpy scalar with dtype %s" src (describe v)))
    let bytes =
        match data with
        | PyBytes b -> Array.copy b
        | PyStr s -> s |> Seq.map byte |> Array.ofSeq
        | v -> raise (CheckpointException(sprintf "%s: numpy scalar data is %s" src (describe v)))
    if order = ">" then Array.Reverse bytes
    let need n =
        if bytes.Length <> n then raise (CheckpointException(sprintf "%s: numpy scalar %s has %d bytes, expected %d" src code bytes.Length n))
    match code with
    | "f8" -> need 8; PyFloat(BitConverter.ToDouble(bytes, 0))
    | "f4" -> need 4; PyFloat(float (BitConverter.ToSingle(bytes, 0)))
    | "f2" -> need 2; PyFloat(float (BitConverter.ToHalf(bytes, 0)))
    | "i8" -> need 8; PyInt(BigInteger(BitConverter.ToInt64(bytes, 0)))
    | "i4" -> need 4; PyInt(BigInteger(BitConverter.ToInt32(bytes, 0)))
    | "i2" -> need 2; PyInt(BigInteger(BitConverter.ToInt16(bytes, 0)))
    | "i1" -> need 1; PyInt(BigInteger(int (sbyte bytes[0])))
    | "u8" -> need 8; PyInt(BigInteger(BitConverter.ToUInt64(bytes, 0)))
    | "u4" -> need 4; PyInt(BigInteger(BitConverter.ToUInt32(bytes, 0)))
    | "u2" -> need 2; PyInt(BigInteger(BitConverter.ToUInt16(bytes, 0)))
    | "u1" -> need 1; PyInt(BigInteger(int bytes[0]))
    | "b1" -> need 1; PyBool(bytes[0] <> 0uy)
    | c -> raise (CheckpointException(sprintf "refused numpy scalar of dtype %s in %s (only numbers are read)" c src))

/// Apply an accepted callable to its arguments (REDUCE / NEWOBJ).
let private call (src: string) (fn: string) (args: PyValue[]) : PyValue =
    let arg i what =
        if i < args.Length then args[i]
        else raise (CheckpointException(sprintf "%s: %s takes %s but got %d arguments" src fn what args.Length))
    match fn with
    | "collections.OrderedDict" ->
        let d = PyDictObj(true)
        if args.Length > 0 then
            match args[0] with
            | PyList items ->
                for it in items do
                    match it with
                    | PyTuple [| k; v |] -> d.Set(k, v)
                    | v -> raise (CheckpointException(sprintf "%s: OrderedDict item is %s" src (describe v)))
            | PyDict other -> for k, v in other.Items do d.Set(k, v)
            | v -> raise (CheckpointException(sprintf "%s: OrderedDict(%s)" src (describe v)))
        PyDict d
    | "torch.Size" ->
        match args with
        | [||] -> PyTuple [||]
        | [| PyTuple t |] -> PyTuple t
        | [| PyList l |] -> PyTuple(l.ToArray())
        | _ -> raise (CheckpointException(sprintf "%s: torch.Size with unexpected arguments" src))
    | "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" ->
        let storage =
            match arg 0 "a storage" with
            | PyStorage s -> s
            | v -> raise (CheckpointException(sprintf "%s: %s expects a storage, found %s" src fn (describe v)))
        let size = intsOf "tensor size" (arg 2 "a size")
        let stride = intsOf "tensor stride" (arg 3 "a stride")
        if size.Length <> stride.Length then
            raise (CheckpointException(sprintf "%s: tensor size %A and stride %A differ in rank" src size stride))
        if fn.EndsWith "_v2" && args.Length > 5 then
            match args[5] with
            | PyDict d when d.Count = 0 -> ()
            | PyNone -> ()
            | v -> raise (CheckpointException(sprintf "%s: a tensor with backward hooks (%s) is refused" src (describe v)))
        PyTensor { Storage = storage; Offset = int64Of "storage offset" (arg 1 "an offset"); Size = size; Stride = stride }
    | "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" ->
        match arg 0 "a tensor" with
        | PyTensor t -> PyTensor t
        | v -> raise (CheckpointException(sprintf "%s: %s of %s" src fn (describe v)))
    | "numpy.dtype" ->
        match arg 0 "a type code" with
        | PyStr code -> PyDtype(code, "<")
        | v -> raise (CheckpointException(sprintf "%s: numpy.dtype(%s)" src (describe v)))
    | "numpy.core.multiarray.scalar" | "numpy._core.multiarray.scalar" ->
        numpyScalar src (arg 0 "a dtype") (if args.Length > 1 then args[1] else PyBytes [||])
    | "_codecs.encode" ->
        match args with
        | [| PyStr s; PyStr enc |] when enc = "latin1" || enc = "latin-1" ->
            PyBytes(s |> Seq.map (fun c -> if int c > 255 then raise (CheckpointException(sprintf "%s: _codecs.encode of a non-latin1 string" src)) else byte c) |> Array.ofSeq)
        | _ -> raise (CheckpointException(sprintf "%s: _codecs.encode is accepted only as the latin1 encoding of a string" src))
    | g -> raise (CheckpointException(sprintf "refused global %s in %s" g src))

/// Read one pickle from data[start..]; returns the value and the position after its STOP opcode.
/// `src` names the source in messages (a file name).
let load (src: string) (data: byte[]) (start: int) (persistentLoad: PersistentLoad) : PyValue * int =
    let fail fmt = Printf.ksprintf (fun s -> raise (CheckpointException(sprintf "%s: %s" src s))) fmt
    let mutable pos = start
    let truncated () = fail "truncated or corrupt pickle (ends at byte %d without a STOP opcode)" data.Length
    let need n = if pos + n > data.Length || n < 0 then truncated ()
    let u8 () =
        need 1
        let b = data[pos]
        pos <- pos + 1
        b
    let bytesN (n: int) =
        need n
        let b = Array.sub data pos n
        pos <- pos + n
        b
    let u16 () = let b = bytesN 2 in int (BitConverter.ToUInt16(b, 0))
    let i32 () = let b = bytesN 4 in BitConverter.ToInt32(b, 0)
    let u32 () = let b = bytesN 4 in BitConverter.ToUInt32(b, 0)
    let u64 () =
        let b = bytesN 8
        let v = BitConverter.ToUInt64(b, 0)
        if v > uint64 Int32.MaxValue then fail "a length of %d bytes is beyond this reader" v
        int v
    let line () =
        let i = Array.IndexOf(data, 10uy, pos)
        if i < 0 then truncated ()
        let s = Encoding.UTF8.GetString(data, pos, i - pos)
        pos <- i + 1
        s
    let len32 () =
        let n = i32 ()
        if n < 0 then fail "negative length %d" n
        n
    let utf8 (b: byte[]) =
        try UTF8Encoding(false, true).GetString b
        with _ -> Encoding.Latin1.GetString b
    let stack = ResizeArray<PyValue>()
    let marks = Stack<int>()
    let memo = Dictionary<int, PyValue>()
    let push v = stack.Add v
    let pop () =
        if stack.Count = 0 || (marks.Count > 0 && stack.Count <= marks.Peek()) then fail "stack underflow at byte %d" (pos - 1)
        let v = stack[stack.Count - 1]
        stack.RemoveAt(stack.Count - 1)
        v
    let top () =
        if stack.Count = 0 then fail "stack underflow at byte %d" (pos - 1)
        stack[stack.Count - 1]
    let popMark () =
        if marks.Count = 0 then fail "no MARK before byte %d" (pos - 1)
        let m = marks.Pop()
        let items = stack.GetRange(m, stack.Count - m).ToArray()
        stack.RemoveRange(m, stack.Count - m)
        items
    let resolveGlobal (modu: string) (name: string) =
        let full = modu + "." + name
        if allowed.Contains full then PyGlobal full
        else
            match storageGlobal full with
            | Some s -> PyGlobal("storage:" + s)
            | None -> raise (CheckpointException(sprintf "refused global %s in %s (only tensors, numbers, strings, lists, tuples, dicts and ordered dicts are read; nothing in the file is executed)" full src))
    let setItems (target: PyValue) (kvs: PyValue[]) =
        match target with
        | PyDict d ->
            if kvs.Length % 2 <> 0 then fail "odd number of items for SETITEMS"
            for i in 0 .. 2 .. kvs.Length - 1 do
                d.Set(kvs[i], kvs[i + 1])
        | v -> fail "SETITEM on %s" (describe v)
    let appendItems (target: PyValue) (xs: PyValue[]) =
        match target with
        | PyList l -> l.AddRange xs
        | v -> fail "APPEND on %s" (describe v)
    let longOf (b: byte[]) = if b.Length = 0 then BigInteger.Zero else BigInteger(b)
    let mutable result = None
    while result.IsNone do
        if pos >= data.Length then truncated ()
        let op = u8 ()
        match op with
        | 0x80uy -> // PROTO
            let p = u8 ()
            if p > 5uy then fail "pickle protocol %d is not supported (0-5)" p
        | 0x95uy -> bytesN 8 |> ignore // FRAME (its length is informational here)
        | 0x2euy -> result <- Some(pop ()) // STOP
        // -- constants
        | 0x4euy -> push PyNone // N
        | 0x88uy -> push (PyBool true)
        | 0x89uy -> push (PyBool false)
        | 0x49uy -> // INT (text); "01"/"00" are bools in protocol 0
            match line () with
            | "01" -> push (PyBool true)
            | "00" -> push (PyBool false)
            | s ->
                match BigInteger.TryParse(s) with
                | true, v -> push (PyInt v)
                | _ -> fail "bad INT %s" s
        | 0x4auy -> push (PyInt(BigInteger(i32 ()))) // BININT
        | 0x4buy -> push (PyInt(BigInteger(int (u8 ())))) // BININT1
        | 0x4duy -> push (PyInt(BigInteger(u16 ()))) // BININT2
        | 0x4cuy -> // LONG (text, trailing L)
            let s = line ()
            match BigInteger.TryParse(s.TrimEnd('L')) with
            | true, v -> push (PyInt v)
            | _ -> fail "bad LONG %s" s
        | 0x8auy -> let n = int (u8 ()) in push (PyInt(longOf (bytesN n))) // LONG1
        | 0x8buy -> let n = len32 () in push (PyInt(longOf (bytesN n))) // LONG4
        | 0x46uy -> // FLOAT (text)
            let s = line ()
            match Double.TryParse(s, Globalization.NumberStyles.Float, Globalization.CultureInfo.InvariantCulture) with
            | true, v -> push (PyFloat v)
            | _ -> fail "bad FLOAT %s" s
        | 0x47uy -> // BINFLOAT (big-endian double)
            let b = bytesN 8
            Array.Reverse b
            push (PyFloat(BitConverter.ToDouble(b, 0)))
        // -- strings and bytes
        | 0x58uy -> let n = len32 () in push (PyStr(utf8 (bytesN n))) // BINUNICODE
        | 0x8cuy -> let n = int (u8 ()) in push (PyStr(utf8 (bytesN n))) // SHORT_BINUNICODE
        | 0x8duy -> let n = u64 () in push (PyStr(utf8 (bytesN n))) // BINUNICODE8
        | 0x56uy -> // UNICODE (raw-unicode-escape text)
            let s = line ()
            push (PyStr(Text.RegularExpressions.Regex.Unescape s))
        | 0x54uy -> let n = len32 () in push (PyStr(utf8 (bytesN n))) // BINSTRING (Python 2 str)
        | 0x55uy -> let n = int (u8 ()) in push (PyStr(utf8 (bytesN n))) // SHORT_BINSTRING
        | 0x53uy -> // STRING (quoted repr)
            let s = line ()
            if s.Length < 2 then fail "bad STRING"
            push (PyStr(Text.RegularExpressions.Regex.Unescape(s.Substring(1, s.Length - 2))))
        | 0x42uy -> let n = len32 () in push (PyBytes(bytesN n)) // BINBYTES
        | 0x43uy -> let n = int (u8 ()) in push (PyBytes(bytesN n)) // SHORT_BINBYTES
        | 0x8euy -> let n = u64 () in push (PyBytes(bytesN n)) // BINBYTES8
        | 0x96uy -> let n = u64 () in push (PyBytes(bytesN n)) // BYTEARRAY8
        // -- containers
        | 0x29uy -> push (PyTuple [||]) // EMPTY_TUPLE
        | 0x74uy -> push (PyTuple(popMark ())) // TUPLE
        | 0x85uy -> let a = pop () in push (PyTuple [| a |])
        | 0x86uy ->
            let b = pop ()
            let a = pop ()
            push (PyTuple [| a; b |])
        | 0x87uy ->
            let c = pop ()
            let b = pop ()
            let a = pop ()
            push (PyTuple [| a; b; c |])
        | 0x5duy -> push (PyList(ResizeArray())) // EMPTY_LIST
        | 0x6cuy -> push (PyList(ResizeArray(popMark ()))) // LIST
        | 0x61uy -> // APPEND
            let v = pop ()
            appendItems (top ()) [| v |]
        | 0x65uy -> // APPENDS
            let xs = popMark ()
            appendItems (top ()) xs
        | 0x7duy -> push (PyDict(PyDictObj(false))) // EMPTY_DICT
        | 0x64uy -> // DICT
            let kvs = popMark ()
            let d = PyDictObj(false)
            setItems (PyDict d) kvs
            push (PyDict d)
        | 0x73uy -> // SETITEM
            let v = pop ()
            let k = pop ()
            setItems (top ()) [| k; v |]
        | 0x75uy -> // SETITEMS
            let kvs = popMark ()
            setItems (top ()) kvs
        | 0x8fuy | 0x90uy | 0x91uy -> fail "refused a set (EMPTY_SET / ADDITEMS / FROZENSET): only tensors, numbers, strings, lists, tuples and dicts are read"
        // -- stack and memo
        | 0x28uy -> marks.Push stack.Count // MARK
        | 0x30uy -> pop () |> ignore // POP
        | 0x31uy -> popMark () |> ignore // POP_MARK
        | 0x32uy -> push (top ()) // DUP
        | 0x70uy -> // PUT (text)
            let s = line ()
            match Int32.TryParse s with
            | true, i -> memo[i] <- top ()
            | _ -> fail "bad PUT %s" s
        | 0x71uy -> memo[int (u8 ())] <- top () // BINPUT
        | 0x72uy -> memo[int (u32 ())] <- top () // LONG_BINPUT
        | 0x94uy -> memo[memo.Count] <- top () // MEMOIZE
        | 0x67uy | 0x68uy | 0x6auy -> // GET / BINGET / LONG_BINGET
            let i =
                match op with
                | 0x67uy ->
                    let s = line ()
                    match Int32.TryParse s with
                    | true, i -> i
                    | _ -> fail "bad GET %s" s
                | 0x68uy -> int (u8 ())
                | _ -> int (u32 ())
            match memo.TryGetValue i with
            | true, v -> push v
            | _ -> fail "memo entry %d read before it was written" i
        // -- globals and object construction
        | 0x63uy -> // GLOBAL "module\nname\n"
            let m = line ()
            let n = line ()
            push (resolveGlobal m n)
        | 0x93uy -> // STACK_GLOBAL
            let n = pop ()
            let m = pop ()
            match m, n with
            | PyStr m, PyStr n -> push (resolveGlobal m n)
            | _ -> fail "STACK_GLOBAL needs two strings"
        | 0x52uy -> // REDUCE
            let args = pop ()
            let fn = pop ()
            let args =
                match args with
                | PyTuple a -> a
                | v -> fail "REDUCE arguments are %s, not a tuple" (describe v)
            match fn with
            | PyGlobal g when not (g.StartsWith "storage:") -> push (call src g args)
            | v -> fail "REDUCE on %s" (describe v)
        | 0x81uy | 0x92uy -> // NEWOBJ / NEWOBJ_EX
            if op = 0x92uy then pop () |> ignore // kwargs
            let args = pop ()
            let cls = pop ()
            match cls, args with
            | PyGlobal "collections.OrderedDict", PyTuple a -> push (call src "collections.OrderedDict" a)
            | PyGlobal g, _ -> raise (CheckpointException(sprintf "refused object of class %s in %s" g src))
            | v, _ -> fail "NEWOBJ on %s" (describe v)
        | 0x62uy -> // BUILD
            let state = pop ()
            match top (), state with
            | PyDict d, PyDict s ->
                d.Attributes <- d.Attributes @ (s.Items |> List.ofSeq)
            | PyDict d, PyTuple [| PyNone; PyDict s |] -> d.Attributes <- d.Attributes @ (s.Items |> List.ofSeq)
            | PyDtype(code, _), PyTuple st when st.Length >= 2 ->
                match st[1] with
                | PyStr order ->
                    stack[stack.Count - 1] <- PyDtype(code, order)
                | _ -> fail "numpy dtype state without a byte order"
            | PyTensor _, _ -> () // Parameter state (requires_grad / hooks): nothing to keep
            | v, s -> fail "BUILD of %s with %s" (describe v) (describe s)
        | 0x69uy -> // INST "module\nname\n"
            let m = line ()
            let n = line ()
            raise (CheckpointException(sprintf "refused global %s.%s in %s (INST)" m n src))
        | 0x6fuy -> // OBJ
            let items = popMark ()
            let cls = if items.Length > 0 then describe items[0] else "?"
            raise (CheckpointException(sprintf "refused object of class %s in %s (OBJ)" cls src))
        | 0x51uy -> // BINPERSID
            let pid = pop ()
            push (persistentLoad pid)
        | 0x50uy -> // PERSID (text)
            let s = line ()
            push (persistentLoad (PyStr s))
        | 0x82uy | 0x83uy | 0x84uy -> fail "refused an extension-registry reference (EXT1/2/4)"
        | 0x97uy | 0x98uy -> fail "refused an out-of-band buffer (protocol 5 NEXT_BUFFER / READONLY_BUFFER)"
        | b -> fail "unknown pickle opcode 0x%02x at byte %d (corrupt file?)" b (pos - 1)
    result.Value, pos

// ------------------------------------------------------------------------------------------------------------------
// Writer: the subset torch.save uses for a state dict (protocol 2).
// ------------------------------------------------------------------------------------------------------------------

/// Writes the pickle of an OrderedDict of tensors exactly as torch.save does (protocol 2, _rebuild_tensor_v2, one
/// storage per tensor, persistent ids ('storage', torch.<Type>Storage, key, 'cpu', numel)).
type Writer() =
    let ms = new MemoryStream()
    let mutable memoCount = 0
    let globals = Dictionary<string, int>()
    member _.Byte(b: byte) = ms.WriteByte b
    member w.Put() =
        // BINPUT / LONG_BINPUT
        if memoCount < 256 then
            w.Byte 0x71uy
            w.Byte(byte memoCount)
        else
            w.Byte 0x72uy
            ms.Write(BitConverter.GetBytes(uint32 memoCount), 0, 4)
        memoCount <- memoCount + 1
        memoCount - 1
    member w.Get(i: int) =
        if i < 256 then
            w.Byte 0x68uy
            w.Byte(byte i)
        else
            w.Byte 0x6auy
            ms.Write(BitConverter.GetBytes(uint32 i), 0, 4)
    member w.Str(s: string) =
        let b = Encoding.UTF8.GetBytes s
        w.Byte 0x58uy
        ms.Write(BitConverter.GetBytes(int32 b.Length), 0, 4)
        ms.Write(b, 0, b.Length)
        w.Put() |> ignore
    member w.Int(i: int64) =
        if i >= 0L && i < 256L then
            w.Byte 0x4buy
            w.Byte(byte i)
        elif i >= 0L && i < 65536L then
            w.Byte 0x4duy
            ms.Write(BitConverter.GetBytes(uint16 i), 0, 2)
        elif i >= int64 Int32.MinValue && i <= int64 Int32.MaxValue then
            w.Byte 0x4auy
            ms.Write(BitConverter.GetBytes(int32 i), 0, 4)
        else
            let b = BigInteger(i).ToByteArray()
            w.Byte 0x8auy
            w.Byte(byte b.Length)
            ms.Write(b, 0, b.Length)
    member w.Global(modu: string, name: string) =
        let key = modu + "\n" + name
        match globals.TryGetValue key with
        | true, i -> w.Get i
        | _ ->
            w.Byte 0x63uy
            let b = Encoding.ASCII.GetBytes(key + "\n")
            ms.Write(b, 0, b.Length)
            globals[key] <- w.Put()
    member w.IntTuple(xs: int64[]) =
        match xs.Length with
        | 0 -> w.Byte 0x29uy
        | 1 | 2 | 3 ->
            for x in xs do w.Int x
            w.Byte(byte (0x84 + xs.Length))
        | _ ->
            w.Byte 0x28uy
            for x in xs do w.Int x
            w.Byte 0x74uy
        w.Put() |> ignore
    /// The pickle of OrderedDict(name -> contiguous tensor stored in storage `key`), or of {wrap: OrderedDict(...)}
    /// (DeiT's {'model': state_dict}).
    member w.StateDict(entries: (string * string * torch.ScalarType * int64[] * int64) list, ?wrap: string) : byte[] =
        w.Byte 0x80uy
        w.Byte 2uy
        match wrap with
        | Some key ->
            w.Byte 0x7duy // EMPTY_DICT
            w.Put() |> ignore
            w.Str key
        | None -> ()
        w.Global("collections", "OrderedDict")
        w.Byte 0x29uy
        w.Byte 0x52uy
        w.Put() |> ignore
        w.Byte 0x28uy
        for name, key, dt, shape, numel in entries do
            w.Str name
            w.Global("torch._utils", "_rebuild_tensor_v2")
            w.Byte 0x28uy // args
            w.Byte 0x28uy // pid tuple
            w.Str "storage"
            match storageTypeOf dt with
            | Some st -> w.Global("torch", st)
            | None -> raise (CheckpointException(sprintf "%s: element type %A cannot be written" name dt))
            w.Str key
            w.Str "cpu"
            w.Int numel
            w.Byte 0x74uy
            w.Put() |> ignore
            w.Byte 0x51uy // BINPERSID
            w.Int 0L // storage offset
            w.IntTuple shape
            let strides = Array.zeroCreate shape.Length
            let mutable acc = 1L
            for i in shape.Length - 1 .. -1 .. 0 do
                strides[i] <- acc
                acc <- acc * shape[i]
            w.IntTuple strides
            w.Byte 0x89uy // requires_grad False
            w.Global("collections", "OrderedDict")
            w.Byte 0x29uy
            w.Byte 0x52uy // OrderedDict() backward hooks
            w.Put() |> ignore
            w.Byte 0x74uy
            w.Put() |> ignore
            w.Byte 0x52uy // REDUCE _rebuild_tensor_v2
            w.Put() |> ignore
        w.Byte 0x75uy // SETITEMS
        if wrap.IsSome then w.Byte 0x73uy // SETITEM
        w.Byte 0x2euy // STOP
        ms.ToArray()
    interface IDisposable with
        member _.Dispose() = ms.Dispose()
