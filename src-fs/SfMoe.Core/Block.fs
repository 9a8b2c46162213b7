/// A pre-norm transformer block, two residual lines (timm Block):
///   x = x + drop_path(attn(norm1 x));  x = x + drop_path(ffn(norm2 x))
/// where ffn is the dense Mlp for fusion blocks.
module SfMoe.Core.Block

open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Pattern
open SfMoe.Core.Config
open SfMoe.Core.Layers

/// The FFN of a block.
type Ffn = Dense of Mlp.Params

type Params =
    { Kind: BlockKind
      Norm1: LayerNorm
      Attn: Attention.Params
      Norm2: LayerNorm
      Ffn: Ffn
      DropPath: float }

/// What a block returns: its output and, when asked, its attention maps.
type Output =
    { X: Tensor
      Attn: Tensor option }

let init (c: VitConfig) (dd: Dd) (g: torch.Generator option) (kind: BlockKind) (dropPath: float) : Params =
    let norm1 = layerNorm dd c.EmbedDim c.NormEps
    let attn = Attention.init c dd g
    let norm2 = layerNorm dd c.EmbedDim c.NormEps
    let ffn =
        match kind with
        | Fusion -> Dense(Mlp.init c dd g)
        | Sparse -> invalidOp "sparse blocks are not available yet"
    { Kind = kind; Norm1 = norm1; Attn = attn; Norm2 = norm2; Ffn = ffn; DropPath = dropPath }

/// State-dict names (timm): norm1, attn.*, norm2, mlp.*.
let tree (p: Params) : (string * Module) list =
    let mlp =
        match p.Ffn with
        | Dense m -> node (Mlp.tree m)
    [ "norm1", p.Norm1 :> Module
      "attn", node (Attention.tree p.Attn) :> Module
      "norm2", p.Norm2 :> Module
      "mlp", mlp :> Module ]

/// (B, N, D) -> (B, N, D)
let forward (c: VitConfig) (ctx: Ctx) (p: Params) (wantAttn: bool) (x: Tensor) : Output =
    let x1 =
        use y = p.Norm1.forward x
        let a, maps = Attention.forward c ctx p.Attn wantAttn y
        use a = a
        use ad = dropPath ctx p.DropPath a
        x + ad, maps
    let x1, maps = x1
    use x1 = x1
    use z = p.Norm2.forward x1
    use f =
        match p.Ffn with
        | Dense m -> Mlp.forward c ctx m z
    use fd = dropPath ctx p.DropPath f
    { X = x1 + fd; Attn = maps }
