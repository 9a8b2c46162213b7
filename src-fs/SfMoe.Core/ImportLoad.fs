/// Loading a pretrained checkpoint (ImportSource.Source, under SfMoe's names) into a network, with every key accounted
/// for: a key of the network is loaded when the checkpoint has it with the same shape; pos_embed is resampled bicubically
/// when the grid differs (timm's resize_pos_embed); the head(s) are re-initialised when the class count differs; the
/// dense FFN of a block that is sparse in the network is copied into every expert (CopyDense) or dropped (KeepInit, the
/// experts keep their init); routers always keep their init. Anything else (a key missing from the checkpoint, a
/// checkpoint key the network lacks, a shape that differs) is an error naming the key and shapes.
module SfMoe.Core.ImportLoad

open System
open System.Text.RegularExpressions
open TorchSharp
open SfMoe.Core.Tensors
open SfMoe.Core.Pattern
open SfMoe.Core.Config
open SfMoe.Core.ImportSource
open SfMoe.Core.ImportReport

open SfMoe

let private fail fmt = Fail.checkpoint fmt

let private headKeys = set [ "head.weight"; "head.bias"; "head_dist.weight"; "head_dist.bias"; "classifier.weight"; "classifier.bias" ]
let private routerRx = Regex(@"^blocks\.(\d+)\.mlp\.gate\.")
let private expertRx = Regex(@"^blocks\.(\d+)\.mlp\.experts\.")
let private denseRx = Regex(@"^blocks\.(\d+)\.mlp\.fc[12]\.(weight|bias)$")

/// The default expert init for a network: KeepInit for SF-MoE (linear router; the authors' behaviour), CopyDense for
/// GMoE (cosine router; GMoE copies DeiT's FFN into every expert).
let defaultExperts (c: VitConfig) : Upcycle.ExpertInit =
    match c.Moe.Router with
    | CosineRouter _ -> Upcycle.CopyDense
    | LinearRouter -> Upcycle.KeepInit

/// Load a checkpoint into a network in place (see the module doc). Nothing is copied unless the whole load is valid.
let loadInto (net: Networks.Network) (src: Source) (experts: Upcycle.ExpertInit option) : Report =
    let target = net.Module.state_dict ()
    let cfg =
        match net with
        | Networks.VitNet v -> Some v.Config
        | _ -> None
    match net, src.IsResNet with
    | Networks.VitNet _, true -> fail "%s is a ResNet-50 checkpoint; the network is a ViT" src.Name
    | Networks.ResNetNet _, false -> fail "%s is not a ResNet-50 checkpoint (torchvision or DomainBed ERM names); the network is a ResNet-50" src.Name
    | Networks.MnistNet _, _ -> fail "no pretrained weights exist for mnist_cnn"
    | _ -> ()
    let mode = match experts, cfg with | Some m, _ -> m | None, Some c -> defaultExperts c | None, None -> Upcycle.KeepInit
    let kinds = cfg |> Option.map VitConfig.kinds |> Option.defaultValue [||]
    let isSparse (i: int) = i < kinds.Length && kinds[i] = Sparse
    // 1. Dense FFNs of blocks that are sparse here become experts (or are dropped).
    let srcTensors, upReport =
        match cfg with
        | Some c ->
            let blocksWithExperts =
                set [ for n, _ in src.Tensors do let m = expertRx.Match n in if m.Success then yield int m.Groups[1].Value ]
            // A block whose checkpoint already has experts keeps them; only dense FFNs are upcycled.
            let dense, rest = src.Tensors |> List.partition (fun (n, _) -> let m = denseRx.Match n in m.Success && not (blocksWithExperts.Contains(int m.Groups[1].Value)))
            let up, rep = Upcycle.stateDict c mode dense
            up @ rest, rep
        | None -> src.Tensors, { Upcycle.Upcycled = []; Upcycle.Dropped = [] }
    let created =
        let original = Collections.Generic.HashSet<Tensor>(src.Tensors |> List.map snd, HashIdentity.Reference)
        srcTensors |> List.filter (fun (_, t) -> not (original.Contains t))
    let fresh = ResizeArray<Tensor>()
    try
        let srcMap = dict srcTensors
        let upcycledTargets = set (upReport.Upcycled |> List.map snd)
        let droppedBlocks =
            set [ for n in upReport.Dropped do let m = denseRx.Match n in if m.Success then yield int m.Groups[1].Value ]
        let loaded = ResizeArray<string>()
        let toCopy = ResizeArray<string * Tensor>()
        let resampled = ResizeArray<string * int64[] * int64[]>()
        let reinit = ResizeArray<string * string>()
        let initialised = ResizeArray<string * string>()
        let missing = ResizeArray<string>()
        let mismatched = ResizeArray<string * int64[] * int64[]>()
        for KeyValue(k, t) in target do
            match srcMap.TryGetValue k with
            | true, s when s.shape = t.shape ->
                toCopy.Add((k, s))
                if not (upcycledTargets.Contains k) then loaded.Add k
            | true, s when k = "pos_embed" && cfg.IsSome && s.ndim = 3L && s.shape[2] = t.shape[2] ->
                let c = cfg.Value
                let prefix = int64 (VitConfig.prefixTokens c)
                let n = s.shape[1] - prefix
                let g = int64 (Math.Round(sqrt (float n)))
                if g * g <> n || n <= 0L then mismatched.Add((k, s.shape, t.shape)) // not a square grid (distilled vs not?)
                else
                    let gt = int64 (VitConfig.grid c)
                    // Resampled in the model's dtype (bicubic interpolation of half precision is not available on the CPU).
                    use s32 = s.to_type(t.dtype)
                    let r = Vit.resamplePosEmbed prefix g g s32 gt gt
                    fresh.Add r
                    if r.shape <> t.shape then mismatched.Add((k, s.shape, t.shape))
                    else
                        toCopy.Add((k, r))
                        resampled.Add((k, s.shape, t.shape))
            | true, s when headKeys.Contains k && s.ndim = t.ndim && s.shape[1..] = t.shape[1..] ->
                reinit.Add((k, sprintf "the checkpoint has %d classes, the model %d" s.shape[0] t.shape[0]))
            | true, s -> mismatched.Add((k, s.shape, t.shape))
            | false, _ when headKeys.Contains k -> reinit.Add((k, "not in the checkpoint"))
            | false, _ ->
                let r, e = routerRx.Match k, expertRx.Match k
                if r.Success && isSparse (int r.Groups[1].Value) then
                    initialised.Add((k, "router: always starts from its init"))
                elif e.Success && droppedBlocks.Contains(int e.Groups[1].Value) then
                    initialised.Add((k, "experts keep their init (experts: random, SF-MoE's behaviour)"))
                elif k.EndsWith "num_batches_tracked" then
                    initialised.Add((k, "BatchNorm step counter, not in the checkpoint"))
                else missing.Add k
        let droppedWhy (n: string) =
            let m = denseRx.Match n
            let i = int m.Groups[1].Value
            match mode with
            | Upcycle.KeepInit -> sprintf "dense FFN of block %d, sparse in the model: its experts start from their init (experts: random)" i
            | Upcycle.CopyDense -> sprintf "bias of block %d's dense FFN: the model's experts have no biases (moe.expert_bias false; the authors' .npz path drops them too)" i
        let ignored =
            [ yield! src.Ignored
              for n in upReport.Dropped -> n, droppedWhy n ]
        let unexpected =
            [ for n, _ in srcTensors do
                  if not (target.ContainsKey n) && not (upReport.Dropped |> List.contains n) then yield n ]
        let hint =
            [ if unexpected |> List.contains "dist_token" then yield "the checkpoint is a distilled DeiT (dist_token, head_dist): use a distilled model such as deit_small_distilled_patch16_224 or sfmoe_small_patch16_224"
              if missing.Contains "dist_token" then yield "the model is distilled (dist_token, head_dist) but the checkpoint is not: use a non-distilled model such as deit_small_patch16_224 or gmoe_small_patch16_224"
              if unexpected |> List.exists (fun n -> n.StartsWith "patch_embed.backbone.") then yield "the checkpoint is a hybrid (ResNet stem): use vit_small_r26_s32_224, hybrid_sfmoe_small_r26_s32_224 or a config with hybrid_backbone"
              if missing |> Seq.exists (fun n -> n.StartsWith "patch_embed.backbone.") then yield "the model is a hybrid (ResNet stem) but the checkpoint has no patch_embed.backbone.*" ]
        if mismatched.Count > 0 || missing.Count > 0 || not unexpected.IsEmpty then
            let parts =
                [ for k, a, b in mismatched -> sprintf "shape mismatch: %s: checkpoint %s, model %s" k (shapeStr a) (shapeStr b)
                  if missing.Count > 0 then yield sprintf "missing in the checkpoint: %s" (String.Join(", ", missing))
                  if not unexpected.IsEmpty then yield sprintf "not in the model: %s" (String.Join(", ", unexpected)) ]
            fail "%s (%s): %s%s" src.Name (Format.name src.Format) (String.Join("; ", parts))
                (if hint.IsEmpty then "" else "; " + String.Join("; ", hint))
        let r = Weights.load false net.Module (List.ofSeq toCopy)
        if not r.Unexpected.IsEmpty then fail "internal: unexpected keys %A" r.Unexpected
        { Loaded = List.ofSeq loaded
          Renamed = src.Renamed
          Resampled = List.ofSeq resampled
          Reinitialised = List.ofSeq reinit
          Upcycled = upReport.Upcycled
          Initialised = List.ofSeq initialised
          Ignored = ignored
          Info = src.Info
          Notes = [] }
    finally
        for _, t in created do t.Dispose()
        for t in fresh do t.Dispose()
