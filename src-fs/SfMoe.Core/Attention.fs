/// Multi-head self-attention (timm Attention): fused qkv projection, scaled dot-product, output projection.
/// Uses libtorch's fused scaled_dot_product_attention unless the attention maps are asked for, attention dropout is
/// active in training, deterministic kernels are asked for (CUDA's fused backward may use atomics) or the input is on
/// the meta device (no meta kernel). Under Bf16 the projections and attention run in bfloat16, the softmax of the
/// explicit path in float32.
module SfMoe.Core.Attention

open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Layers

type Params = { Qkv: Linear; Proj: Linear }

let init (c: VitConfig) (dd: Dd) (g: torch.Generator option) : Params =
    { Qkv = linear dd g c.EmbedDim (3 * c.EmbedDim) c.QkvBias
      Proj = linear dd g c.EmbedDim c.EmbedDim true }

/// State-dict names (timm): attn.qkv, attn.proj.
let tree (p: Params) : (string * Module) list = [ "qkv", p.Qkv :> Module; "proj", p.Proj :> Module ]

/// (B, N, D) -> (B, N, D), and the attention probabilities (B, heads, N, N) when `wantMaps`.
let forward (c: VitConfig) (ctx: Ctx) (p: Params) (wantMaps: bool) (x: Tensor) : Tensor * Tensor option =
    let b, n, d = x.shape[0], x.shape[1], x.shape[2]
    let h = int64 c.NumHeads
    let hd = d / h
    use qkvFlat = dense ctx p.Qkv x // (B, N, 3D)
    use qkv5 = qkvFlat.view(b, n, 3L, h, hd)
    use qkv = qkv5.permute(2L, 0L, 3L, 1L, 4L) // (3, B, H, N, hd)
    use q = qkv[0]
    use k = qkv[1]
    use v = qkv[2]
    let attnDrop = if ctx.Training then c.AttnDropRate else 0.0
    let o, maps =
        if not wantMaps && attnDrop = 0.0 && not ctx.Deterministic && not (isMeta x) then
            torch.nn.functional.scaled_dot_product_attention(q, k, v), None // (B, H, N, hd)
        else
            use kt = k.transpose(-2L, -1L)
            use scores = torch.matmul(q, kt).mul_(Scalars.constant (1.0 / sqrt (float hd))) // (B, H, N, N)
            let probs =
                if scores.dtype = torch.ScalarType.BFloat16 || scores.dtype = torch.ScalarType.Float16 then
                    scores.softmax(-1L, torch.ScalarType.Float32)
                else scores.softmax(-1L)
            use pv = if probs.dtype = v.dtype then probs.alias () else probs.to_type(v.dtype)
            use dropped = dropout ctx attnDrop pv
            torch.matmul(dropped, v), (if wantMaps then Some probs else (probs.Dispose(); None))
    use ot = o.transpose(1L, 2L) // (B, N, H, hd)
    o.Dispose()
    use merged = ot.reshape(b, n, d) // (B, N, D)
    use projected = dense ctx p.Proj merged
    dropout ctx (if ctx.Training then c.DropRate else 0.0) projected, maps
