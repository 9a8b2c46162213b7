/// A builder of ONNX graphs: named values, deduplicated constants, the operators the exporters use (default domain,
/// opset 17 and later, with the opset-dependent forms chosen here) and sizes that are either known at export or
/// computed by the graph from its input's shape (a dynamic batch).
module SfMoe.Core.Onnx.Graph

open System
open System.Collections.Generic
open SfMoe.Core.Onnx.Protobuf
open SfMoe.Core.Onnx.Proto

/// A size known at export, or computed by the graph (the name of a 1-element int64 tensor).
type Size =
    | Fixed of int64
    | Runtime of string

type Graph(opset: int) =
    let nodes = ResizeArray<Field list>()
    let inits = ResizeArray<string * TensorValue>()
    let values = HashSet<string>()
    let nodeNames = HashSet<string>()
    let consts = Dictionary<string, string>()
    let inputs = ResizeArray<Field list>()
    let outputs = ResizeArray<Field list>()
    let mutable scope = ""
    let mutable initBytes = 0L

    let unique (set: HashSet<string>) (name: string) =
        let mutable n = name
        let mutable i = 1
        while not (set.Add n) do
            n <- sprintf "%s_%d" name i
            i <- i + 1
        n

    let scoped (hint: string) = if scope = "" then hint else scope + "/" + hint

    member _.Opset = opset

    /// Bytes of initializer data so far.
    member _.InitializerBytes = initBytes

    /// Names of values and nodes created inside `f` start with `prefix/` (e.g. "blocks.3/attn").
    member _.Within(prefix: string, f: unit -> 'T) : 'T =
        let saved = scope
        scope <- (if saved = "" then prefix else saved + "/" + prefix)
        try f () finally scope <- saved

    /// A node with `count` outputs; returns their names.
    member _.NodeN(op: string, ins: string list, attrs: (string * AttrValue) list, hint: string, count: int) : string list =
        let outs = [ for i in 0 .. count - 1 -> unique values (scoped (if count = 1 then hint else sprintf "%s.%d" hint i)) ]
        nodes.Add(node op (unique nodeNames (scoped op)) ins outs attrs)
        outs

    member g.Node(op: string, ins: string list, ?attrs: (string * AttrValue) list, ?hint: string) : string =
        List.head (g.NodeN(op, ins, defaultArg attrs [], defaultArg hint (op.ToLowerInvariant()), 1))

    /// An initializer under a unique name derived from `name`.
    member _.Init(name: string, t: TensorValue) : string =
        let n = unique values name
        inits.Add((n, t))
        initBytes <- initBytes + int64 t.Raw.Length
        n

    member private g.Const(key: string, make: unit -> TensorValue) : string =
        match consts.TryGetValue key with
        | true, n -> n
        | _ ->
            let n = g.Init("const." + key, make ())
            consts[key] <- n
            n

    /// A 1-D int64 constant.
    member g.Ints(xs: int64 list) =
        let key = "i64[" + String.Join(",", xs) + "]"
        g.Const(key, fun () -> TensorValue.int64s [| int64 xs.Length |] (Array.ofList xs))

    /// A scalar (0-D) int64 constant.
    member g.Int(x: int64) = g.Const(sprintf "i64(%d)" x, fun () -> TensorValue.int64s [||] [| x |])

    /// A scalar (0-D) float32 constant.
    member g.Float(x: float32) =
        g.Const(sprintf "f32(%08x)" (BitConverter.SingleToUInt32Bits x), fun () -> TensorValue.float32s [||] [| x |])

    /// A scalar (0-D) float64 constant.
    member g.Double(x: float) =
        g.Const(sprintf "f64(%016x)" (BitConverter.DoubleToUInt64Bits x), fun () -> TensorValue.float64s [||] [| x |])

    member _.Input(name: string, elemType: int, dims: Dim list) =
        values.Add name |> ignore
        inputs.Add(valueInfo name elemType dims)
        name

    /// Declare `value` a graph output named `name` (an Identity node renames it).
    member g.Output(value: string, name: string, elemType: int, dims: Dim list) =
        if not (values.Add name) then invalidOp (sprintf "value %s exists" name)
        nodes.Add(node "Identity" (unique nodeNames ("output/" + name)) [ value ] [ name ] [])
        outputs.Add(valueInfo name elemType dims)

    /// The model message.
    member _.Model(producer: string, version: string, doc: string, metadata: (string * string) list) : Field list =
        let gr = graph "sfmoe" nodes inits (List.ofSeq inputs) (List.ofSeq outputs)
        model opset producer version doc gr metadata

    // ---- operators (ONNX default domain) ----

    member g.Add(a, b, ?hint) = g.Node("Add", [ a; b ], hint = defaultArg hint "add")
    member g.Sub(a, b, ?hint) = g.Node("Sub", [ a; b ], hint = defaultArg hint "sub")
    member g.Mul(a, b, ?hint) = g.Node("Mul", [ a; b ], hint = defaultArg hint "mul")
    member g.Div(a, b, ?hint) = g.Node("Div", [ a; b ], hint = defaultArg hint "div")
    member g.Max(a, b, ?hint) = g.Node("Max", [ a; b ], hint = defaultArg hint "max")
    member g.MatMul(a, b, ?hint) = g.Node("MatMul", [ a; b ], hint = defaultArg hint "matmul")
    /// a (M, K) times b^T for b (N, K), plus c (N,) when given: one Gemm node (ONNX Runtime's GEMM adds the bias as
    /// it writes the product, where MatMul then Add is a second pass over the output).
    member g.GemmT(a, b, c: string option, ?hint) =
        g.Node("Gemm", [ yield a; yield b; match c with Some c -> yield c | None -> () ], [ "transB", AInt 1L ], defaultArg hint "gemm")
    member g.Less(a, b, ?hint) = g.Node("Less", [ a; b ], hint = defaultArg hint "less")
    member g.Greater(a, b, ?hint) = g.Node("Greater", [ a; b ], hint = defaultArg hint "greater")
    member g.Equal(a, b, ?hint) = g.Node("Equal", [ a; b ], hint = defaultArg hint "equal")
    member g.And(a, b, ?hint) = g.Node("And", [ a; b ], hint = defaultArg hint "and")
    member g.Where(c, a, b, ?hint) = g.Node("Where", [ c; a; b ], hint = defaultArg hint "where")
    member g.Neg(x, ?hint) = g.Node("Neg", [ x ], hint = defaultArg hint "neg")
    member g.Relu(x, ?hint) = g.Node("Relu", [ x ], hint = defaultArg hint "relu")
    member g.Sqrt(x, ?hint) = g.Node("Sqrt", [ x ], hint = defaultArg hint "sqrt")
    member g.Cast(x, toType: int, ?hint) = g.Node("Cast", [ x ], [ "to", AInt(int64 toType) ], defaultArg hint "cast")
    member g.Softmax(x, axis: int, ?hint) = g.Node("Softmax", [ x ], [ "axis", AInt(int64 axis) ], defaultArg hint "softmax")
    member g.Transpose(x, perm: int list, ?hint) =
        g.Node("Transpose", [ x ], [ "perm", AInts(perm |> List.map int64) ], defaultArg hint "transpose")
    member g.Reshape(x, shape: string, ?hint) = g.Node("Reshape", [ x; shape ], hint = defaultArg hint "reshape")
    /// Reshape to constant dims (0 copies the input's dim, -1 is inferred).
    member g.ReshapeTo(x, dims: int64 list, ?hint) = g.Reshape(x, g.Ints dims, defaultArg hint "reshape")
    member g.Concat(xs: string list, axis: int, ?hint) = g.Node("Concat", xs, [ "axis", AInt(int64 axis) ], defaultArg hint "concat")
    member g.Unsqueeze(x, axes: int64 list, ?hint) = g.Node("Unsqueeze", [ x; g.Ints axes ], hint = defaultArg hint "unsqueeze")
    member g.Squeeze(x, axes: int64 list, ?hint) = g.Node("Squeeze", [ x; g.Ints axes ], hint = defaultArg hint "squeeze")
    /// x[..., start:end, ...] along one axis.
    member g.Slice(x, axis: int64, start: int64, stop: int64, ?hint) =
        g.Node("Slice", [ x; g.Ints [ start ]; g.Ints [ stop ]; g.Ints [ axis ] ], hint = defaultArg hint "slice")
    /// x[..., start:end, ...] with a computed end (a 1-element tensor).
    member g.SliceTo(x, axis: int64, start: int64, stop: string, ?hint) =
        g.Node("Slice", [ x; g.Ints [ start ]; stop; g.Ints [ axis ] ], hint = defaultArg hint "slice")
    member g.Gather(x, indices, axis: int, ?hint) = g.Node("Gather", [ x; indices ], [ "axis", AInt(int64 axis) ], defaultArg hint "gather")
    member g.GatherElements(x, indices, axis: int, ?hint) =
        g.Node("GatherElements", [ x; indices ], [ "axis", AInt(int64 axis) ], defaultArg hint "gather")
    member g.ScatterElements(x, indices, updates, axis: int, ?hint) =
        g.Node("ScatterElements", [ x; indices; updates ], [ "axis", AInt(int64 axis) ], defaultArg hint "scatter")
    member g.Expand(x, shape: string, ?hint) = g.Node("Expand", [ x; shape ], hint = defaultArg hint "expand")
    /// Exclusive or inclusive cumulative sum along an axis.
    member g.CumSum(x, axis: int64, exclusive: bool, ?hint) =
        g.Node("CumSum", [ x; g.Int axis ], [ "exclusive", AInt(if exclusive then 1L else 0L) ], defaultArg hint "cumsum")
    member g.ReduceSum(x, axes: int64 list, keepDims: bool, ?hint) =
        g.Node("ReduceSum", [ x; g.Ints axes ], [ "keepdims", AInt(if keepDims then 1L else 0L) ], defaultArg hint "sum")
    /// ReduceMean, ReduceMax, ReduceL2: axes are an attribute before opset 18 and an input from 18.
    member g.Reduce(op: string, x, axes: int64 list, keepDims: bool, ?hint) =
        let keep = "keepdims", AInt(if keepDims then 1L else 0L)
        let hint = defaultArg hint (op.ToLowerInvariant())
        if opset >= 18 then g.Node(op, [ x; g.Ints axes ], [ keep ], hint)
        else g.Node(op, [ x ], [ "axes", AInts axes; keep ], hint)
    /// TopK along the last axis: (values, indices), largest first, ties in index order.
    member g.TopK(x, k: string, ?hint) =
        match g.NodeN("TopK", [ x; k ], [ "axis", AInt -1L; "largest", AInt 1L; "sorted", AInt 1L ], defaultArg hint "topk", 2) with
        | [ v; i ] -> v, i
        | _ -> failwith "TopK has two outputs"
    member g.Range(start, limit, delta, ?hint) = g.Node("Range", [ start; limit; delta ], hint = defaultArg hint "range")
    /// A tensor of the given (1-D int64) shape filled with an int64 value.
    member g.FillInt(shape: string, value: int64, ?hint) =
        g.Node("ConstantOfShape", [ shape ], [ "value", ATensor(TensorValue.int64s [| 1L |] [| value |]) ], defaultArg hint "fill")
    /// Dims start..stop-1 of x's shape (a 1-D int64 tensor).
    member g.Shape(x, start: int, stop: int, ?hint) =
        g.Node("Shape", [ x ], [ "start", AInt(int64 start); "end", AInt(int64 stop) ], defaultArg hint "shape")
    member g.LayerNorm(x, scale, bias, eps: float, ?hint) =
        g.Node("LayerNormalization", [ x; scale; bias ], [ "axis", AInt -1L; "epsilon", AFloat(float32 eps) ], defaultArg hint "layernorm")
    /// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), in the form ONNX Runtime fuses into one kernel.
    member g.Gelu(x, ?hint) =
        g.Within(defaultArg hint "gelu", fun () ->
            let d = g.Div(x, g.Float(float32 (sqrt 2.0)))
            let e = g.Node("Erf", [ d ])
            let a = g.Add(e, g.Float 1.0f)
            let m = g.Mul(x, a)
            g.Mul(m, g.Float 0.5f, "gelu"))

    // ---- sizes ----

    /// Dim `axis` of x's shape.
    member g.Dim(x: string, axis: int) = Runtime(g.Shape(x, axis, axis + 1, "dim"))

    /// A size as a 1-element int64 tensor.
    member g.SizeTensor(s: Size) =
        match s with
        | Fixed v -> g.Ints [ v ]
        | Runtime n -> n

    /// A size as a scalar (0-D) int64 tensor.
    member g.SizeScalar(s: Size) =
        match s with
        | Fixed v -> g.Int v
        | Runtime n -> g.Squeeze(n, [ 0L ], "scalar")

    member g.MulSize(a: Size, b: Size) =
        match a, b with
        | Fixed x, Fixed y -> Fixed(x * y)
        | Fixed 1L, r | r, Fixed 1L -> r
        | _ -> Runtime(g.Mul(g.SizeTensor a, g.SizeTensor b, "size"))

    member g.AddSize(a: Size, b: Size) =
        match a, b with
        | Fixed x, Fixed y -> Fixed(x + y)
        | Fixed 0L, r | r, Fixed 0L -> r
        | _ -> Runtime(g.Add(g.SizeTensor a, g.SizeTensor b, "size"))

    /// A shape (1-D int64 tensor) from sizes: a constant when every size is known.
    member g.ShapeOf(sizes: Size list) =
        if sizes |> List.forall (function Fixed _ -> true | Runtime _ -> false) then
            g.Ints(sizes |> List.map (function Fixed v -> v | Runtime _ -> 0L))
        else g.Concat(sizes |> List.map g.SizeTensor, 0, "shape")

    /// 0, 1, ..., n-1 as int64.
    member g.Arange(n: Size) =
        match n with
        | Fixed v -> g.Ints [ 0L .. v - 1L ]
        | Runtime _ -> g.Range(g.Int 0L, g.SizeScalar n, g.Int 1L, "arange")
