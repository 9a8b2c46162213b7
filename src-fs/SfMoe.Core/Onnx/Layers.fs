/// Weights into initializers, and the layers every exporter shares: Linear (one Gemm on 2-D activations), LayerNorm,
/// Conv2d, eval-mode BatchNorm and GroupNorm. Initializers keep the state-dict names (`blocks.3.attn.qkv.weight`).
module SfMoe.Core.Onnx.Layers

open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Onnx.Proto
open SfMoe.Core.Onnx.Graph

/// A float32 tensor's values (copied to the CPU, contiguous).
let floats (t: Tensor) : TensorValue =
    use scope = torch.NewDisposeScope()
    use _ = torch.no_grad ()
    let c = t.detach().cpu().to_type(torch.ScalarType.Float32).contiguous()
    TensorValue.float32s c.shape (c.data<float32>().ToArray())

/// An initializer from a tensor.
let param (g: Graph) (name: string) (t: Tensor) : string = g.Init(name, floats t)

/// Linear layer `key` on x (M, in) -> (M, out): a Gemm with the weight as stored (out, in) and the bias fused.
/// Callers keep activations 2-D (tokens flattened to rows) so that every linear layer is one Gemm.
let linear (g: Graph) (key: string) (l: Linear) (x: string) : string =
    let bias = match l.bias with null -> None | b -> Some(param g (key + ".bias") b)
    g.GemmT(x, param g (key + ".weight") l.weight, bias, key)

let layerNorm (g: Graph) (key: string) (n: LayerNorm) (x: string) : string =
    g.LayerNorm(x, param g (key + ".weight") n.weight, param g (key + ".bias") n.bias, n.eps, key)

/// A 2-D convolution with explicit pads (top, left, bottom, right) and the given (e.g. standardised) kernel.
let convWith (g: Graph) (key: string) (weight: Tensor) (bias: Tensor option) (stride: int64) (pads: int64 * int64 * int64 * int64) (x: string) : string =
    let kh, kw = weight.shape[2], weight.shape[3]
    let t, l, b, r = pads
    let ins = [ yield x; yield param g (key + ".weight") weight; match bias with Some bt -> yield param g (key + ".bias") bt | None -> () ]
    g.Node("Conv", ins, [ "kernel_shape", AInts [ kh; kw ]; "strides", AInts [ stride; stride ]; "pads", AInts [ t; l; b; r ] ], key)

/// A Conv2d module as configured (symmetric padding, square stride).
let conv (g: Graph) (key: string) (c: Conv2d) (x: string) : string =
    if c.groups <> 1L || c.dilation |> Array.exists ((<>) 1L) then
        SfMoe.Fail.checkpoint "%s: a convolution with groups %d and dilation %s has no ONNX export (the exporter writes groups 1, dilation 1 only)"
            key c.groups (c.dilation |> Array.map string |> String.concat "x")
    let ph, pw = c.padding[0], c.padding[c.padding.Length - 1]
    convWith g key c.weight (Option.ofObj (c.bias :> Tensor)) c.stride[0] (ph, pw, ph, pw) x

/// Eval-mode BatchNorm2d (running statistics).
let batchNorm (g: Graph) (key: string) (n: BatchNorm2d) (x: string) : string =
    let ins =
        [ x
          param g (key + ".weight") n.weight
          param g (key + ".bias") n.bias
          param g (key + ".running_mean") n.running_mean
          param g (key + ".running_var") n.running_var ]
    g.Node("BatchNormalization", ins, [ "epsilon", Proto.AFloat(float32 n.eps) ], key)

/// GroupNorm over (B, C, H, W): InstanceNormalization of the (B, groups, C/groups*H*W) view, then the per-channel
/// affine transform.
let groupNorm (g: Graph) (key: string) (n: GroupNorm) (x: string) : string =
    let groups = n.num_groups
    let c = n.weight.shape[0]
    let grouped = g.ReshapeTo(x, [ 0L; groups; -1L ], key)
    let ones = g.Init(key + ".group_scale", TensorValue.float32s [| groups |] (Array.create (int groups) 1.0f))
    let zeros = g.Init(key + ".group_bias", TensorValue.float32s [| groups |] (Array.zeroCreate (int groups)))
    let normed = g.Node("InstanceNormalization", [ grouped; ones; zeros ], [ "epsilon", AFloat(float32 n.eps) ], key)
    let back = g.Reshape(normed, g.Shape(x, 0, 4), key)
    use w = n.weight.reshape(c, 1L, 1L)
    use b = n.bias.reshape(c, 1L, 1L)
    g.Add(g.Mul(back, param g (key + ".weight") w, key), param g (key + ".bias") b, key)
