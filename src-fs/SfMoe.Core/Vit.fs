/// The Vision Transformer with a block pattern (timm VisionTransformer / DeiT):
///   patch_embed -> [cls, (dist), patches] + pos_embed -> blocks -> norm -> head(s)
/// Distilled models (DeiT) average the cls and dist heads, in training and in eval (SF-MoE spec §1.2).
module SfMoe.Core.Vit

open System
open System.Runtime.InteropServices
open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Pattern
open SfMoe.Core.Config
open SfMoe.Core.Layers

/// Parameters held in modules (the prefix tokens and position embedding live on the root module).
type Params =
    { PatchEmbed: Conv2d
      /// The ResNetV2 stem of a hybrid (timm HybridEmbed: patch_embed.backbone), before PatchEmbed.
      Backbone: ResNetV2.Params option
      Blocks: Block.Params[]
      Norm: LayerNorm
      Head: Linear
      HeadDist: Linear option }

/// The raw parameters of the root: cls_token (1,1,D), dist_token (1,1,D), pos_embed (1,T+P,D).
type Tokens =
    { Cls: Tensor
      Dist: Tensor option
      Pos: Tensor }

/// What a forward pass returns. The caller disposes it.
type Output =
    { /// (B, K) class logits (the mean of both heads when distilled).
      Logits: Tensor
      /// (B, N, D) output of the final norm.
      Features: Tensor
      /// Sum over sparse blocks of aux_loss_weight * balance loss (scalar; 0 without sparse blocks).
      Aux: Tensor
      /// Per block, (B, heads, N, N) attention probabilities; empty unless asked for.
      Attention: Tensor list
      /// Per sparse block (block index, record); empty unless asked for.
      Routing: (int * Moe.Record) list
      /// Per sparse block (block index, routing statistics on the device).
      Stats: (int * Moe.Stats) list }
    interface IDisposable with
        member this.Dispose() =
            this.Logits.Dispose()
            this.Features.Dispose()
            this.Aux.Dispose()
            for a in this.Attention do a.Dispose()
            for _, r in this.Routing do (r :> IDisposable).Dispose()
            for _, st in this.Stats do (st :> IDisposable).Dispose()

let init (c: VitConfig) (dd: Dd) (g: torch.Generator option) : Params * (string * Parameter) list =
    let d = int64 c.EmbedDim
    let tok (shape: int64[]) =
        let p = parameter dd shape
        Init.truncNormal 0.02 g p
        p
    let backbone = c.Hybrid |> Option.map (fun h -> ResNetV2.init h c.InChans dd g)
    let patch = patchConv dd g (VitConfig.patchInChans c) c.EmbedDim c.PatchSize
    let cls = tok [| 1L; 1L; d |]
    let dist = if c.Distilled then Some(tok [| 1L; 1L; d |]) else None
    let pos = tok [| 1L; int64 (VitConfig.numTokens c); d |]
    let rates = VitConfig.dropPathRates c
    let blocks = VitConfig.kinds c |> Array.mapi (fun i k -> Block.init c dd g k rates[i])
    let norm = layerNorm dd c.EmbedDim c.NormEps
    let head = linear dd g c.EmbedDim c.NumClasses true
    let headDist = if c.Distilled then Some(linear dd g c.EmbedDim c.NumClasses true) else None
    let tokens =
        [ yield "cls_token", cls
          match dist with
          | Some t -> yield "dist_token", t
          | None -> ()
          yield "pos_embed", pos ]
    { PatchEmbed = patch; Backbone = backbone; Blocks = blocks; Norm = norm; Head = head; HeadDist = headDist }, tokens

/// State-dict names of the module children (timm): patch_embed.proj (after patch_embed.backbone.* for a hybrid),
/// blocks.{i}, norm, head, head_dist.
let tree (p: Params) : (string * Module) list =
    let embed =
        [ match p.Backbone with
          | Some b -> yield "backbone", node (ResNetV2.tree b) :> Module
          | None -> ()
          yield "proj", p.PatchEmbed :> Module ]
    [ yield "patch_embed", node embed :> Module
      yield "blocks", node (p.Blocks |> Array.mapi (fun i b -> string i, node (Block.tree b) :> Module) |> List.ofArray) :> Module
      yield "norm", p.Norm :> Module
      yield "head", p.Head :> Module
      match p.HeadDist with
      | Some h -> yield "head_dist", h :> Module
      | None -> () ]

/// Resample a position embedding (1, T + g0h*g0w, D) with T prefix-token rows to a (gh, gw) grid: the grid part
/// bicubically (align_corners = false, as timm's resize_pos_embed), the prefix rows as they are.
let resamplePosEmbed (prefixTokens: int64) (g0h: int64) (g0w: int64) (pos: Tensor) (gh: int64) (gw: int64) : Tensor =
    if gh = g0h && gw = g0w then pos.alias ()
    else
        let t = prefixTokens
        let d = pos.shape[2]
        use prefix = pos.narrow(1L, 0L, t) // (1, T, D)
        use gridPart = pos.narrow(1L, t, g0h * g0w)
        use grid4 = gridPart.reshape(1L, g0h, g0w, d)
        use grid = grid4.permute(0L, 3L, 1L, 2L) // (1, D, g0h, g0w)
        use resized =
            torch.nn.functional.interpolate(grid, [| gh; gw |], mode = torch.InterpolationMode.Bicubic, align_corners = false)
        use back = resized.permute(0L, 2L, 3L, 1L)
        use flat = back.reshape(1L, gh * gw, d) // (1, gh*gw, D)
        torch.cat([| prefix; flat |], 1L)

/// Position embedding for a (gh, gw) patch grid: the configured grid's part is resampled bicubically
/// (align_corners = false, as timm) when the grid differs; prefix-token rows are kept.
let posEmbedFor (c: VitConfig) (pos: Tensor) (gh: int64) (gw: int64) : Tensor =
    let g0 = int64 (VitConfig.grid c)
    resamplePosEmbed (int64 (VitConfig.prefixTokens c)) g0 g0 pos gh gw

/// Check an input batch against the config; the message names the dimension at fault.
let checkInput (c: VitConfig) (x: Tensor) =
    if x.ndim <> 4L then
        invalidArg "x" (sprintf "expected images of shape (B, %d, H, W), got %s" c.InChans (shapeString x))
    if x.shape[1] <> int64 c.InChans then
        invalidArg "x" (sprintf "expected %d channels (in_chans), got %d in input of shape %s" c.InChans x.shape[1] (shapeString x))
    match c.Hybrid with
    | Some h ->
        let fh, fw = HybridConfig.featureSize h (int x.shape[2]), HybridConfig.featureSize h (int x.shape[3])
        if x.shape[2] = 0L || x.shape[3] = 0L || fh % c.PatchSize <> 0 || fw % c.PatchSize <> 0 then
            invalidArg "x" (sprintf "the hybrid stem turns %dx%d images into a %dx%d feature map, not a positive multiple of patch_size %d" x.shape[2] x.shape[3] fh fw c.PatchSize)
    | None ->
        if x.shape[2] % int64 c.PatchSize <> 0L || x.shape[3] % int64 c.PatchSize <> 0L || x.shape[2] = 0L || x.shape[3] = 0L then
            invalidArg "x" (sprintf "image height and width must be positive multiples of patch_size %d, got %dx%d" c.PatchSize x.shape[2] x.shape[3])

/// Embed patches and prepend the prefix tokens: (B, C, H, W) -> (B, N, D).
let embed (c: VitConfig) (ctx: Ctx) (p: Params) (tok: Tokens) (x: Tensor) : Tensor =
    checkInput c x
    let b = x.shape[0]
    // The hybrid's ResNetV2 stem computes in float32 whatever the precision.
    let seq, gh, gw =
        match p.Backbone with
        | Some bb ->
            use f = ResNetV2.forward bb x // (B, F, H/stride, W/stride)
            patchEmbed ctx p.PatchEmbed c.PatchSize f
        | None -> patchEmbed ctx p.PatchEmbed c.PatchSize x // (B, gh*gw, D)
    use seq = seq
    use cls = tok.Cls.expand(b, -1L, -1L) // (B, 1, D)
    use all =
        match tok.Dist with
        | Some dist ->
            use dt = dist.expand(b, -1L, -1L)
            torch.cat([| cls; dt; seq |], 1L)
        | None -> torch.cat([| cls; seq |], 1L) // (B, N, D)
    use pos = posEmbedFor c tok.Pos gh gw
    use summed = add all pos
    dropout ctx (if ctx.Training then c.DropRate else 0.0) summed

/// What the blocks produce besides the features.
type Extras =
    { Aux: Tensor
      Attention: Tensor list
      Routing: (int * Moe.Record) list
      Stats: (int * Moe.Stats) list }

/// Blocks and final norm: (B, C, H, W) -> features (B, N, D), the summed aux loss, and per-block attention maps
/// and routing records when asked.
let forwardFeatures (c: VitConfig) (ctx: Ctx) (p: Params) (tok: Tokens) (wantAttn: bool) (wantRouting: bool) (x: Tensor) : Tensor * Extras =
    let h0 = embed c ctx p tok x
    let aux0 = torch.zeros([||], dtype = h0.dtype, device = h0.device)
    let h, aux, maps, records, stats =
        p.Blocks
        |> Array.indexed
        |> Array.fold (fun (h: Tensor, aux: Tensor, maps, records, stats) (i, blk) ->
            let o = Block.forward c ctx blk wantAttn wantRouting h
            h.Dispose()
            let aux =
                match o.Aux with
                | Some a ->
                    let s = add aux a
                    aux.Dispose()
                    a.Dispose()
                    s
                | None -> aux
            o.X,
            aux,
            (match o.Attn with Some a -> a :: maps | None -> maps),
            (match o.Routing with Some r -> (i, r) :: records | None -> records),
            (match o.Stats with Some st -> (i, st) :: stats | None -> stats)) (h0, aux0, [], [], [])
    use h = h
    norm p.Norm h, { Aux = aux; Attention = List.rev maps; Routing = List.rev records; Stats = List.rev stats }

/// Classifier head(s) on the prefix tokens: (B, N, D) -> (B, K), in the context's precision and returned in the
/// weights' dtype (float32 logits under Bf16).
let forwardHead (ctx: Ctx) (p: Params) (features: Tensor) : Tensor =
    let back (t: Tensor) = if t.dtype = p.Head.weight.dtype then t else (use t = t in t.to_type(p.Head.weight.dtype))
    use cls = features.select(1L, 0L)
    match p.HeadDist with
    | Some hd ->
        use dist = features.select(1L, 1L)
        use a = back (dense ctx p.Head cls)
        use b = back (dense ctx hd dist)
        (add a b).div_(Scalars.constant 2.0)
    | None -> back (dense ctx p.Head cls)

/// The model as a TorchSharp module (the one object-oriented adapter): owns the parameters under timm's
/// state-dict names; `forward` returns logits, `Run` everything else. Build it where it runs (`dd`).
type SfMoeVit(config: VitConfig, dd: Dd, seed: int64 option) as this =
    inherit torch.nn.Module<Tensor, Tensor>("SfMoeVit")

    let config =
        match VitConfig.validate config with
        | Ok c -> c
        | Error e -> invalidArg "config" e

    let gen = seed |> Option.map (fun s -> generator s dd)
    let layers, tokens = init config dd gen

    do
        for n, m in tree layers do
            this.register_module(n, m)
        for n, t in tokens do
            this.register_parameter(n, t)
        gen |> Option.iter (fun g -> g.Dispose())

    new(config: VitConfig) = new SfMoeVit(config, Dd.cpu, None)

    member _.Config = config
    member _.Params = layers
    member _.Dd = dd

    /// The current prefix tokens and position embedding.
    member this.Tokens: Tokens =
        { Cls = this.get_parameter "cls_token"
          Dist = if config.Distilled then Some(this.get_parameter "dist_token" :> Tensor) else None
          Pos = this.get_parameter "pos_embed" }

    /// Forward in an explicit context (random stream, precision, determinism); the module's training flag sets the mode.
    member this.RunWith(ctx: Ctx, x: Tensor, returnAttention: bool, returnRouting: bool) : Output =
        let ctx = { ctx with Training = this.training }
        let feats, ex = forwardFeatures config ctx layers this.Tokens returnAttention returnRouting x
        { Logits = forwardHead ctx layers feats; Features = feats; Aux = ex.Aux; Attention = ex.Attention; Routing = ex.Routing
          Stats = ex.Stats }

    /// Forward with everything: logits, features and (when asked) attention maps. `rng` drives dropout and
    /// every other random choice in training mode (None: torch's global generator); it is a CPU generator (as every
    /// TorchSharp Generator), whose draws are copied to the model's device.
    member this.Run
        (
            x: Tensor,
            [<Optional; DefaultParameterValue(false)>] returnAttention: bool,
            [<Optional; DefaultParameterValue(false)>] returnRouting: bool,
            [<Optional; DefaultParameterValue(null: torch.Generator)>] rng: torch.Generator
        ) : Output =
        let ctx = match Option.ofObj rng with Some g -> Ctx.withRng g Ctx.eval | None -> Ctx.eval
        this.RunWith(ctx, x, returnAttention, returnRouting)

    override this.forward(x: Tensor) : Tensor =
        use o = this.Run(x)
        o.Logits.alias ()
