/// The dense FFN of fusion blocks (timm Mlp): fc1 -> exact GELU -> dropout -> fc2 -> dropout, in the context's
/// precision (the output is bfloat16 under Bf16).
module SfMoe.Core.Mlp

open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Layers

type Params = { Fc1: Linear; Fc2: Linear }

let init (c: VitConfig) (dd: Dd) (g: torch.Generator option) : Params =
    let hidden = VitConfig.hidden c
    { Fc1 = linear dd g c.EmbedDim hidden true
      Fc2 = linear dd g hidden c.EmbedDim true }

/// State-dict names (timm): mlp.fc1, mlp.fc2.
let tree (p: Params) : (string * Module) list = [ "fc1", p.Fc1 :> Module; "fc2", p.Fc2 :> Module ]

/// (..., D) -> (..., D)
let forward (c: VitConfig) (ctx: Ctx) (p: Params) (x: Tensor) : Tensor =
    let drop = if ctx.Training then c.DropRate else 0.0
    use h = dense ctx p.Fc1 x // (..., H)
    use a = torch.nn.functional.gelu h
    use ad = dropout ctx drop a
    use y = dense ctx p.Fc2 ad // (..., D)
    dropout ctx drop y
