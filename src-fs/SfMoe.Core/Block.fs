/// A pre-norm transformer block, two residual lines (timm Block):
///   x = x + drop_path(attn(norm1 x));  x = x + drop_path(ffn(norm2 x))
/// where ffn is the dense Mlp (fusion block) or the Mixture-of-Experts layer (sparse block).
module SfMoe.Core.Block

open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Pattern
open SfMoe.Core.Config
open SfMoe.Core.Layers

/// The FFN of a block.
type Ffn =
    | DenseFfn of Mlp.Params
    | MoeFfn of Moe.Params

type Params =
    { Kind: BlockKind
      Norm1: LayerNorm
      Attn: Attention.Params
      Norm2: LayerNorm
      Ffn: Ffn
      DropPath: float }

/// What a block returns: its output, the weighted balance loss of a sparse block, and what was asked for.
type Output =
    { X: Tensor
      Aux: Tensor option
      Attn: Tensor option
      Routing: Moe.Record option
      /// Routing statistics of a sparse block (on the device).
      Stats: Moe.Stats option }

let init (c: VitConfig) (dd: Dd) (g: torch.Generator option) (kind: BlockKind) (dropPath: float) : Params =
    let norm1 = layerNorm dd c.EmbedDim c.NormEps
    let attn = Attention.init c dd g
    let norm2 = layerNorm dd c.EmbedDim c.NormEps
    let ffn =
        match kind with
        | Fusion -> DenseFfn(Mlp.init c dd g)
        | Sparse -> MoeFfn(Moe.init c dd g)
    { Kind = kind; Norm1 = norm1; Attn = attn; Norm2 = norm2; Ffn = ffn; DropPath = dropPath }

/// State-dict names (timm): norm1, attn.*, norm2, mlp.* (sparse blocks: mlp.gate.*, mlp.experts.*).
let tree (p: Params) : (string * Module) list =
    let mlp =
        match p.Ffn with
        | DenseFfn m -> node (Mlp.tree m)
        | MoeFfn m -> node (Moe.tree m)
    [ "norm1", p.Norm1 :> Module
      "attn", node (Attention.tree p.Attn) :> Module
      "norm2", p.Norm2 :> Module
      "mlp", mlp :> Module ]

/// (B, N, D) -> (B, N, D)
let forward (c: VitConfig) (ctx: Ctx) (p: Params) (wantAttn: bool) (wantRouting: bool) (x: Tensor) : Output =
    let x1, maps =
        use y = norm p.Norm1 x
        let a, maps = Attention.forward c ctx p.Attn wantAttn y
        use a = a
        use ad = dropPath ctx p.DropPath a
        add x ad, maps
    use x1 = x1
    use z = norm p.Norm2 x1
    let f, aux, routing, stats =
        match p.Ffn with
        | DenseFfn m -> Mlp.forward c ctx m z, None, None, None
        | MoeFfn m ->
            let o = Moe.forward c ctx m wantRouting z
            o.Y, Some o.Aux, o.Record, Some o.Stats
    use f = f
    use fd = dropPath ctx p.DropPath f
    // The residual stream keeps the weights' dtype (float32 under Bf16: the bfloat16 branch is promoted).
    { X = add x1 fd; Aux = aux; Attn = maps; Routing = routing; Stats = stats }
