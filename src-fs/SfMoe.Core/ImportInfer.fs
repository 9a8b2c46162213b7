/// The architecture of a pretrained checkpoint, inferred from its tensors' names and shapes when the file does not
/// state it: embedding width, depth, patch size, image size (from pos_embed's grid), distillation, qkv bias, MLP ratio,
/// the block pattern (blocks with experts are sparse; expert count, expert biases and the router from their tensors),
/// the class count, and a hybrid's ResNetV2 stem. Heads = D / 64 as in every timm/DeiT size.
module SfMoe.Core.ImportInfer

open System
open System.Text.RegularExpressions
open SfMoe.Core.Pattern
open SfMoe.Core.Config
open SfMoe.Core.ImportSource

open SfMoe

let private fail fmt = Fail.checkpoint fmt

/// Where a message asks the caller to name the model instead of inferring it.
let private nameTheModel = "name the model: ImportOptions.Model or ImportOptions.ModelConfigJson"

/// The ViT config a checkpoint's tensors describe (heads = D / 64 as in every timm/DeiT size; GroupNorm groups 32).
/// Also returns the assumptions made.
let inferConfig (src: Source) : VitConfig * string list =
    let t = dict src.Tensors
    let shape (k: string) =
        match t.TryGetValue k with
        | true, x -> Some x.shape
        | _ -> None
    let req (k: string) =
        match shape k with
        | Some s -> s
        | None -> fail "%s: cannot infer the model: no %s (%s)" src.Name k nameTheModel
    let d = int (req "cls_token").[2]
    let depth =
        src.Tensors
        |> List.choose (fun (n, _) -> let m = Regex.Match(n, @"^blocks\.(\d+)\.") in if m.Success then Some(int m.Groups[1].Value) else None)
        |> List.fold max -1
        |> (+) 1
    if depth < 1 then fail "%s: cannot infer the model: no blocks.* keys" src.Name
    let distilled = t.ContainsKey "dist_token"
    let prefix = if distilled then 2 else 1
    let patchW = req "patch_embed.proj.weight"
    let patch = int patchW[2]
    let hybrid =
        if t.ContainsKey "patch_embed.backbone.stem.conv.weight" then
            let stages =
                src.Tensors
                |> List.choose (fun (n, _) -> let m = Regex.Match(n, @"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.conv3\.weight$") in if m.Success then Some(int m.Groups[1].Value, int m.Groups[2].Value) else None)
                |> List.groupBy fst
                |> List.sortBy fst
            let layers = stages |> List.map (fun (_, bs) -> bs.Length)
            let channels = stages |> List.map (fun (s, _) -> int (req (sprintf "patch_embed.backbone.stages.%d.blocks.0.conv3.weight" s)).[0])
            let stem = int (req "patch_embed.backbone.stem.conv.weight").[0]
            let widths = stem :: channels @ (channels |> List.map HybridConfig.mid)
            let groups = [ 32; 16; 8; 4; 2; 1 ] |> List.find (fun g -> widths |> List.forall (fun c -> c % g = 0))
            Some { Layers = layers; Channels = channels; StemChannels = stem; NumGroups = groups }
        else None
    let inChans =
        match hybrid with
        | Some _ -> int (req "patch_embed.backbone.stem.conv.weight").[1]
        | None -> int patchW[1]
    let n = int (req "pos_embed").[1] - prefix
    let g = int (Math.Round(sqrt (float n)))
    if g * g <> n then fail "%s: pos_embed has %d patch positions, not a square grid" src.Name n
    let imgSize =
        match hybrid with
        | Some h -> g * patch * HybridConfig.stride h
        | None -> g * patch
    let kinds =
        [ for i in 0 .. depth - 1 ->
              if t.ContainsKey(sprintf "blocks.%d.mlp.experts.w1" i) then Sparse else Fusion ]
    let hidden =
        match [ 0 .. depth - 1 ] |> List.tryPick (fun i -> shape (sprintf "blocks.%d.mlp.fc1.weight" i)) with
        | Some s -> int s[0]
        | None ->
            match [ 0 .. depth - 1 ] |> List.tryPick (fun i -> shape (sprintf "blocks.%d.mlp.experts.w1" i)) with
            | Some s -> int s[2]
            | None -> 4 * d
    let moe =
        match [ 0 .. depth - 1 ] |> List.tryFind (fun i -> kinds[i] = Sparse) with
        | None -> MoeConfig.sfmoe
        | Some i ->
            let p = sprintf "blocks.%d.mlp." i
            let e = int (req (p + "experts.w1")).[0]
            let bias = t.ContainsKey(p + "experts.b1")
            match shape (p + "gate.sim_matrix") with
            | Some s -> { MoeConfig.gmoe with NumExperts = e; Router = CosineRouter(int s[0]); ExpertBias = bias }
            | None -> { MoeConfig.sfmoe with NumExperts = e; ExpertBias = bias }
    let heads = max 1 (d / 64)
    let classes =
        match shape "head.weight" with
        | Some s -> int s[0]
        | None -> 1000
    let cfg =
        { VitConfig.create d depth heads with
            ImgSize = imgSize
            PatchSize = patch
            InChans = inChans
            MlpRatio = float hidden / float d
            NumClasses = classes
            Distilled = distilled
            QkvBias = t.ContainsKey "blocks.0.attn.qkv.bias"
            Pattern = ofKinds kinds
            Moe = moe
            Hybrid = hybrid }
    let notes =
        [ yield sprintf "num_heads %d assumed (embed_dim / 64, as every timm/DeiT size)" heads
          match hybrid with
          | Some h when h.NumGroups = 32 -> yield "GroupNorm with 32 groups assumed (timm's ResNetV2)"
          | Some h -> yield sprintf "GroupNorm with %d groups assumed (the most, up to timm's 32, that divide every width)" h.NumGroups
          | None -> ()
          if kinds |> List.contains Sparse then
              yield sprintf "MoE settings other than the expert count are the %s defaults" (match moe.Router with CosineRouter _ -> "GMoE" | LinearRouter -> "SF-MoE")
          if not (t.ContainsKey "head.weight") then yield "no head in the checkpoint: 1000 classes assumed" ]
    match VitConfig.validate cfg with
    | Ok c -> c, notes
    | Error e -> fail "%s: the inferred model is invalid (%s); %s" src.Name e nameTheModel

