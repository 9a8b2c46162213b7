/// The eval-mode ViT / SF-MoE / GMoE forward pass as an ONNX graph (Vit.fs): the hybrid's ResNetV2 stem (kernels
/// standardised at export, TF "SAME" pads from the configured size), patch embedding, prefix tokens, the position
/// embedding resampled for the configured size, blocks (attention, dense or MoE FFN), final norm and head(s).
module SfMoe.Core.Onnx.VitGraph

open TorchSharp
open SfMoe.Core
open SfMoe.Core.Config
open SfMoe.Core.Onnx.Proto
open SfMoe.Core.Onnx.Graph
open SfMoe.Core.Onnx.Layers

/// A standardised, SAME-padded convolution on a (side x side) input; returns the output and its side.
let private stdConv (g: Graph) (key: string) (c: ResNetV2.StdConv) (side: int64) (x: string) : string * int64 =
    let t, b = ResNetV2.samePad side c.Kernel c.Stride
    use w = ResNetV2.standardize c.Conv.weight
    let y = convWith g key w None (int64 c.Stride) (t, t, b, b) x
    y, (side + t + b - int64 c.Kernel) / int64 c.Stride + 1L

/// The ResNetV2 stem (ResNetV2.forward) on (B, C, side, side) -> (B, F, side', side').
let private hybridStem (g: Graph) (p: ResNetV2.Params) (side: int64) (x: string) : string =
    let key = "patch_embed.backbone"
    let gnRelu k n relu y =
        let o = groupNorm g k n y
        if relu then g.Relu o else o
    let h, side = stdConv g (key + ".stem.conv") p.StemConv side x
    let a = gnRelu (key + ".stem.norm") p.StemNorm true h
    let t, b = ResNetV2.samePad side 3 2
    // Max pooling ignores padded cells, as the stem's -inf padding does.
    let pooled = g.Node("MaxPool", [ a ], [ "kernel_shape", AInts [ 3L; 3L ]; "strides", AInts [ 2L; 2L ]; "pads", AInts [ t; t; b; b ] ], "stem_pool")
    let mutable cur, curSide = pooled, (side + t + b - 3L) / 2L + 1L
    for si, stage in Array.indexed p.Stages do
        for bi, blk in Array.indexed stage do
            let bk = sprintf "%s.stages.%d.blocks.%d" key si bi
            let x, inSide = cur, curSide
            let shortcut =
                match blk.Downsample with
                | Some(c, n) ->
                    let d, _ = stdConv g (bk + ".downsample.conv") c inSide x
                    gnRelu (bk + ".downsample.norm") n false d
                | None -> x
            let h1, s1 = stdConv g (bk + ".conv1") blk.Conv1 inSide x
            let a1 = gnRelu (bk + ".norm1") blk.Norm1 true h1
            let h2, s2 = stdConv g (bk + ".conv2") blk.Conv2 s1 a1
            let a2 = gnRelu (bk + ".norm2") blk.Norm2 true h2
            let h3, s3 = stdConv g (bk + ".conv3") blk.Conv3 s2 a2
            let y = gnRelu (bk + ".norm3") blk.Norm3 false h3
            cur <- g.Relu(g.Add(y, shortcut))
            curSide <- s3
    cur

/// Self-attention (Attention.forward) on tokens (B*N, D) -> (B*N, D).
let private attention (g: Graph) (c: VitConfig) (key: string) (p: Attention.Params) (x: string) : string =
    let n = int64 (VitConfig.numTokens c)
    let d = int64 c.EmbedDim
    let h = int64 c.NumHeads
    let hd = d / h
    // The qkv projection as three Gemms (rows i*D .. (i+1)*D of its weight): each output goes straight into its head
    // layout with one Transpose, where splitting one (B*N, 3D) output would copy it once more.
    let part i (name: string) (perm: int list) =
        use w = p.Qkv.weight.narrow(0L, i * d, d)
        let bias =
            match p.Qkv.bias with
            | null -> None
            | b -> (use bi = b.narrow(0L, i * d, d) in Some(param g (sprintf "%s.qkv.bias.%s" key name) bi))
        let y = g.GemmT(x, param g (sprintf "%s.qkv.weight.%s" key name) w, bias, name) // (B*N, D)
        g.Transpose(g.ReshapeTo(y, [ -1L; n; h; hd ]), perm, name + "_heads")
    let q = g.Mul(part 0L "q" [ 0; 2; 1; 3 ], g.Float(float32 (1.0 / sqrt (float hd))), "q_scaled") // (B, H, N, hd)
    let kt = part 1L "k" [ 0; 2; 3; 1 ] // (B, H, hd, N)
    let probs = g.Softmax(g.MatMul(q, kt, "scores"), -1, "attn") // (B, H, N, N)
    let o = g.MatMul(probs, part 2L "v" [ 0; 2; 1; 3 ], "attn_out") // (B, H, N, hd)
    let merged = g.ReshapeTo(g.Transpose(o, [ 0; 2; 1; 3 ]), [ -1L; d ], "merged") // (B*N, D)
    linear g (key + ".proj") p.Proj merged

/// Patch embedding with prefix tokens and position embedding: (B, C, H, W) -> (B, N, D).
let private embed (g: Graph) (c: VitConfig) (v: Vit.SfMoeVit) (batch: Size) (images: string) : string =
    let p = v.Params
    let d = int64 c.EmbedDim
    let features =
        match p.Backbone with
        | Some bb -> hybridStem g bb (int64 c.ImgSize) images
        | None -> images
    let patches = conv g "patch_embed.proj" p.PatchEmbed features // (B, D, gh, gw)
    let seq = g.Transpose(g.ReshapeTo(patches, [ 0L; d; -1L ]), [ 0; 2; 1 ], "patch_tokens") // (B, P, D)
    let tok = v.Tokens
    let shape = g.ShapeOf [ batch; Fixed 1L; Fixed d ]
    let prefix name (t: torch.Tensor) = g.Expand(param g name t, shape, name) // (B, 1, D)
    let all =
        [ yield prefix "cls_token" tok.Cls
          match tok.Dist with
          | Some t -> yield prefix "dist_token" t
          | None -> ()
          yield seq ]
    let grid = int64 (VitConfig.grid c)
    use pos = Vit.posEmbedFor c tok.Pos grid grid // (1, N, D)
    g.Add(g.Concat(all, 1, "tokens"), param g "pos_embed" pos, "embedded")

/// The network: images (B, C, H, W) -> logits (B, K), and the routing of each sparse block when asked. The blocks
/// work on the tokens as rows (B*N, D), so that every linear layer is one Gemm.
let forward (g: Graph) (v: Vit.SfMoeVit) (policy: SecondPolicy -> SecondPolicy) (batch: Size) (wantRouting: bool) (images: string) : string * (int * MoeGraph.Routing) list =
    let c = v.Config
    let p = v.Params
    let n = int64 (VitConfig.numTokens c)
    let d = int64 c.EmbedDim
    let mutable x = g.Within("embed", fun () -> g.ReshapeTo(embed g c v batch images, [ -1L; d ], "token_rows"))
    let routing = ResizeArray()
    for i, blk in Array.indexed p.Blocks do
        let key = sprintf "blocks.%d" i
        x <-
            g.Within(key, fun () ->
                let a = attention g c (key + ".attn") blk.Attn (layerNorm g (key + ".norm1") blk.Norm1 x)
                let x1 = g.Add(x, a, "residual1")
                let z = layerNorm g (key + ".norm2") blk.Norm2 x1
                let f =
                    match blk.Ffn with
                    | Block.DenseFfn m ->
                        // fc1 as MatMul + Add on (B, N, D), which ONNX Runtime fuses with the GELU into one BiasGelu
                        // pass (a Gemm would add the bias in a pass of its own).
                        use w1t = m.Fc1.weight.t ()
                        let z3 = g.ReshapeTo(z, [ -1L; n; d ], "fc1_in")
                        let h0 = g.MatMul(z3, param g (key + ".mlp.fc1.weight_t") w1t, "fc1")
                        let h1 = match m.Fc1.bias with null -> h0 | b -> g.Add(h0, param g (key + ".mlp.fc1.bias") b, "fc1")
                        let hdim = m.Fc1.weight.shape[0]
                        linear g (key + ".mlp.fc2") m.Fc2 (g.ReshapeTo(g.Gelu h1, [ -1L; hdim ], "fc2_in"))
                    | Block.MoeFfn m ->
                        let y, r = MoeGraph.forward g c (policy c.Moe.SecondPolicy) m (key + ".mlp") batch wantRouting z
                        r |> Option.iter (fun r -> routing.Add((i, r)))
                        y
                g.Add(x1, f, "residual2"))
    let logits =
        g.Within("head", fun () ->
            // The final norm is per token: only the prefix tokens the heads read are normalised.
            let prefixes = match p.HeadDist with Some _ -> 2L | None -> 1L
            let tokens = g.Slice(g.ReshapeTo(x, [ -1L; n; d ], "tokens"), 1L, 0L, prefixes, "prefix_tokens") // (B, 1|2, D)
            let feats = layerNorm g "norm" p.Norm tokens
            let token i = g.Gather(feats, g.Int i, 1, "prefix_token") // (B, D)
            let head = linear g "head" p.Head (token 0L)
            match p.HeadDist with
            | Some hd -> g.Div(g.Add(head, linear g "head_dist" hd (token 1L)), g.Float 2.0f, "logits")
            | None -> head)
    logits, List.ofSeq routing
