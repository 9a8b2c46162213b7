/// Typed model configuration: the ViT backbone (timm names and defaults) and the MoE layer used by sparse
/// blocks. Configs are plain immutable records, kept apart from parameters; `validate` names the field at
/// fault with its JSON (snake_case) key.
module SfMoe.Core.Config

open SfMoe.Core.Pattern

/// How a sparse block's router scores experts.
type RouterKind =
    /// Softmax over a linear projection (GShard / SF-MoE, lucidrains `w_gating` [D,E], init N(0,1)).
    | LinearRouter
    /// Cosine similarity of a `projDim`-d projection (tutel: 256) with learned expert embeddings and a learned
    /// temperature (GMoE / tutel `cosine_top`).
    | CosineRouter of projDim: int

/// What happens to each token's second choice when k = 2 (GShard / SF-MoE rules).
type SecondPolicy =
    /// Always dispatch the second expert.
    | SecondAll
    /// Never dispatch it (its gate still renormalises the first).
    | SecondNone
    /// Dispatch it when its renormalised gate exceeds the threshold.
    | SecondThreshold of threshold: float
    /// Dispatch it with probability min(1, gate2 / threshold).
    | SecondRandom of threshold: float

/// Expert capacity: a factor (see CapacityScope for the formula) or no limit at all.
type Capacity =
    | Factor of float
    | Dropless

/// Over which tokens capacity, slot order and balance statistics are computed.
type CapacityScope =
    /// Per image (SF-MoE): C = max(minCapacity, min(N, floor(N*cf/E))), token order, second choices after
    /// the kept first choices.
    | PerImage of minCapacity: int
    /// Over the whole batch (tutel / GMoE): C = k * int(cf * ceil(S/E)), optionally batch-prioritised.
    | PerBatch

/// Balance loss of a sparse block.
type AuxLoss =
    /// E^2 * mean_e(mean gate prob * top-1 fraction) (SF-MoE; per image then averaged, or per batch).
    | GShardLoss
    /// (CV^2(importance) + CV^2(load)) / 2 (tutel / GMoE).
    | LoadImportanceLoss

/// The Mixture-of-Experts layer of sparse blocks. Settings that only apply to one router, second-expert policy or
/// capacity scope live in that case (CosineRouter's projection size, the policies' threshold, PerImage's minimum
/// capacity).
type MoeConfig =
    { NumExperts: int
      TopK: int
      Router: RouterKind
      /// The second choice's fate (k = 2 only).
      SecondPolicy: SecondPolicy
      CapacityTrain: Capacity
      CapacityEval: Capacity
      Scope: CapacityScope
      /// Slots go to tokens in descending order of their top probability instead of token order (tutel).
      BatchPrioritized: bool
      GateNoise: float
      AuxLoss: AuxLoss
      AuxLossWeight: float
      ExpertBias: bool
      ExpertDropout: float }

module RouterKind =
    /// tutel's projection size of the cosine router.
    let defaultProjDim = 256

module SecondPolicy =
    /// SF-MoE's threshold of the threshold and random policies.
    let defaultThreshold = 0.2
    /// The policy's threshold, if it has one.
    let threshold (p: SecondPolicy) =
        match p with
        | SecondThreshold t | SecondRandom t -> Some t
        | SecondAll | SecondNone -> None

module CapacityScope =
    /// SF-MoE's minimum per-image capacity.
    let defaultMinCapacity = 4

module MoeConfig =
    /// SF-MoE as released (lucidrains top-2 GShard gate, spec §3.1).
    let sfmoe =
        { NumExperts = 4
          TopK = 2
          Router = LinearRouter
          SecondPolicy = SecondRandom SecondPolicy.defaultThreshold
          CapacityTrain = Factor 1.25
          CapacityEval = Factor 2.0
          Scope = PerImage CapacityScope.defaultMinCapacity
          BatchPrioritized = false
          GateNoise = 0.0
          AuxLoss = GShardLoss
          AuxLossWeight = 0.01
          ExpertBias = false
          ExpertDropout = 0.0 }

    /// GMoE (ICLR 2023; tutel cosine top-1, spec §3.6).
    let gmoe =
        { sfmoe with
            NumExperts = 6
            TopK = 1
            Router = CosineRouter RouterKind.defaultProjDim
            SecondPolicy = SecondAll
            CapacityTrain = Factor 1.5
            CapacityEval = Factor 1.5
            Scope = PerBatch
            BatchPrioritized = true
            GateNoise = 1.0
            AuxLoss = LoadImportanceLoss
            ExpertBias = true
            ExpertDropout = 0.1 }

    let validate (m: MoeConfig) : Result<MoeConfig, string> =
        let cap name c =
            match c with
            | Factor f when not (f > 0.0) || System.Double.IsInfinity f ->
                Some(sprintf "moe.%s must be a number > 0 or \"dropless\", got %g" name f)
            | _ -> None
        [ (if m.NumExperts < 1 then Some(sprintf "moe.num_experts must be >= 1, got %d" m.NumExperts) else None)
          (if m.TopK < 1 || m.TopK > 2 then Some(sprintf "moe.top_k must be 1 or 2, got %d" m.TopK) else None)
          (if m.TopK > m.NumExperts then
               Some(sprintf "moe.top_k (%d) must not exceed moe.num_experts (%d)" m.TopK m.NumExperts)
           else None)
          (match SecondPolicy.threshold m.SecondPolicy with
           | Some t when not (t >= 0.0 && t <= 1.0) -> Some(sprintf "moe.second_threshold must be in [0, 1], got %g" t)
           | _ -> None)
          cap "capacity_factor_train" m.CapacityTrain
          cap "capacity_factor_eval" m.CapacityEval
          (match m.Scope with
           | PerImage c when c < 0 -> Some(sprintf "moe.min_capacity must be >= 0, got %d" c)
           | _ -> None)
          (if not (m.GateNoise >= 0.0) then Some(sprintf "moe.gate_noise must be >= 0, got %g" m.GateNoise) else None)
          (if not (m.AuxLossWeight >= 0.0) then
               Some(sprintf "moe.aux_loss_weight must be >= 0, got %g" m.AuxLossWeight)
           else None)
          (if not (m.ExpertDropout >= 0.0 && m.ExpertDropout < 1.0) then
               Some(sprintf "moe.expert_dropout must be in [0, 1), got %g" m.ExpertDropout)
           else None)
          (if m.AuxLoss = LoadImportanceLoss && not (m.GateNoise > 0.0) then
               Some "moe.aux_loss \"load_importance\" needs moe.gate_noise > 0 (it sets the scale of the load estimate)"
           else None)
          (match m.Router with
           | CosineRouter p when p < 1 -> Some(sprintf "moe.cosine_proj_dim must be >= 1, got %d" p)
           | _ -> None) ]
        |> List.choose id
        |> function
            | [] -> Ok m
            | e :: _ -> Error e

/// The ResNetV2 stem of a hybrid ViT (timm ResNetV2 with preact=False, stem_type 'same', StdConv2dSame with
/// eps 1e-8, GroupNorm + ReLU): a 7x7/2 stem conv, GroupNorm, ReLU and a 3x3/2 max pool (TF "SAME" padding), then
/// stages of non-pre-activation bottlenecks (stride 1 in the first stage, 2 in the others). Its feature map
/// feeds a convolutional patch embedding (timm HybridEmbed, usually 1x1).
type HybridConfig =
    { /// Bottleneck blocks per stage: R26 (2, 2, 2, 2), R50 (3, 4, 9).
      Layers: int list
      /// Output channels per stage (bottleneck width: out / 4 rounded as timm's make_div).
      Channels: int list
      /// Output channels of the stem convolution.
      StemChannels: int
      /// GroupNorm groups (32 in timm).
      NumGroups: int }

module HybridConfig =
    /// R26 (vit_small_r26_s32_224): 4 stages, output stride 32, 2048 features.
    let r26 = { Layers = [ 2; 2; 2; 2 ]; Channels = [ 256; 512; 1024; 2048 ]; StemChannels = 64; NumGroups = 32 }
    /// R50 as in the ViT paper's hybrid (vit_base_r50_s16_224): 3 stages, output stride 16, 1024 features.
    let r50 = { Layers = [ 3; 4; 9 ]; Channels = [ 256; 512; 1024 ]; StemChannels = 64; NumGroups = 32 }
    let presets = [ "r26", r26; "r50", r50 ]

    /// timm's make_div(v, 8): the nearest multiple of 8 (at least 8), never below 90 % of v.
    let makeDiv (v: float) =
        let n = max 8 (int (v + 4.0) / 8 * 8)
        if float n < 0.9 * v then n + 8 else n

    /// Bottleneck width of a stage with `outChannels` outputs.
    let mid (outChannels: int) = makeDiv (float outChannels * 0.25)
    let featureDim (h: HybridConfig) = List.last h.Channels
    /// Stride of the output feature map (4 after the stem, x2 per stage after the first).
    let stride (h: HybridConfig) = 4 * pown 2 (List.length h.Layers - 1)

    /// Feature-map size for an input size: each stride-2 step with SAME padding gives ceil(x / 2).
    let featureSize (h: HybridConfig) (x: int) =
        let half v = (v + 1) / 2
        let mutable s = half (half x)
        for _ in 2 .. List.length h.Layers do
            s <- half s
        s

    let validate (h: HybridConfig) : string option =
        let groups name (c: int) =
            if h.NumGroups >= 1 && c % h.NumGroups <> 0 then
                Some(sprintf "hybrid_backbone: %s (%d) must be divisible by num_groups (%d)" name c h.NumGroups)
            else None
        [ (if h.Layers.IsEmpty then Some "hybrid_backbone.layers must not be empty" else None)
          (if h.Layers.Length <> h.Channels.Length then
               Some(sprintf "hybrid_backbone: layers has %d stages but channels has %d" h.Layers.Length h.Channels.Length)
           else None)
          (if h.Layers |> List.exists (fun n -> n < 1) then Some "hybrid_backbone.layers must all be >= 1" else None)
          (if h.Channels |> List.exists (fun n -> n < 1) then Some "hybrid_backbone.channels must all be >= 1" else None)
          (if h.StemChannels < 1 then Some(sprintf "hybrid_backbone.stem_channels must be >= 1, got %d" h.StemChannels) else None)
          (if h.NumGroups < 1 then Some(sprintf "hybrid_backbone.num_groups must be >= 1, got %d" h.NumGroups) else None)
          groups "stem_channels" h.StemChannels ]
        @ [ for c in h.Channels do
                yield groups "channels" c
                yield groups (sprintf "the bottleneck width of %d channels" c) (mid c) ]
        |> List.choose id
        |> List.tryHead

/// A Vision Transformer with a block pattern (timm VisionTransformer arguments and defaults).
type VitConfig =
    { ImgSize: int
      PatchSize: int
      InChans: int
      EmbedDim: int
      Depth: int
      NumHeads: int
      MlpRatio: float
      NumClasses: int
      /// DeiT distillation: a second prefix token and head; logits are the mean of both heads.
      Distilled: bool
      QkvBias: bool
      DropRate: float
      AttnDropRate: float
      /// Stochastic depth, linear over depth (timm): block i drops with rate * i / (depth - 1).
      DropPathRate: float
      NormEps: float
      Pattern: Pattern
      /// Used by the sparse blocks of the pattern.
      Moe: MoeConfig
      /// A ResNetV2 stem before the patch embedding (hybrid ViT, timm HybridEmbed); None: patches of the image.
      Hybrid: HybridConfig option }

module VitConfig =
    /// Hidden size of the dense FFN (timm: int(dim * mlp_ratio)).
    let hidden (c: VitConfig) = int (float c.EmbedDim * c.MlpRatio)
    let prefixTokens (c: VitConfig) = if c.Distilled then 2 else 1
    /// Patch grid side at the configured image size (of the stem's feature map for a hybrid).
    let grid (c: VitConfig) =
        match c.Hybrid with
        | None -> c.ImgSize / c.PatchSize
        | Some h -> HybridConfig.featureSize h c.ImgSize / c.PatchSize
    /// Input channels of the patch embedding (the stem's features for a hybrid).
    let patchInChans (c: VitConfig) =
        match c.Hybrid with
        | None -> c.InChans
        | Some h -> HybridConfig.featureDim h
    let numPatches (c: VitConfig) = grid c * grid c
    let numTokens (c: VitConfig) = numPatches c + prefixTokens c
    let headDim (c: VitConfig) = c.EmbedDim / c.NumHeads
    let kinds (c: VitConfig) = expand c.Pattern |> List.toArray

    /// Drop-path rate of each block (timm linear schedule, float32 linspace).
    let dropPathRates (c: VitConfig) =
        Array.init c.Depth (fun i ->
            if c.Depth <= 1 then 0.0
            else float (float32 c.DropPathRate * float32 i / float32 (c.Depth - 1)))

    /// The dense twin: the same config with every block a fusion block.
    let denseTwin (c: VitConfig) = { c with Pattern = dense c.Depth }

    /// Plain ViT defaults of the given size (timm VisionTransformer defaults: qkv bias, eps 1e-6, no dropout).
    let create (embedDim: int) (depth: int) (heads: int) =
        { ImgSize = 224
          PatchSize = 16
          InChans = 3
          EmbedDim = embedDim
          Depth = depth
          NumHeads = heads
          MlpRatio = 4.0
          NumClasses = 1000
          Distilled = false
          QkvBias = true
          DropRate = 0.0
          AttnDropRate = 0.0
          DropPathRate = 0.0
          NormEps = 1e-6
          Pattern = dense depth
          Moe = MoeConfig.sfmoe
          Hybrid = None }

    let validate (c: VitConfig) : Result<VitConfig, string> =
        let rate name (v: float) =
            if v >= 0.0 && v < 1.0 then None else Some(sprintf "%s must be in [0, 1), got %g" name v)
        let pos name (v: int) = if v >= 1 then None else Some(sprintf "%s must be >= 1, got %d" name v)
        [ pos "img_size" c.ImgSize
          pos "patch_size" c.PatchSize
          pos "in_chans" c.InChans
          pos "embed_dim" c.EmbedDim
          pos "depth" c.Depth
          pos "num_heads" c.NumHeads
          pos "num_classes" c.NumClasses
          (match c.Hybrid with
           | None when c.PatchSize >= 1 && c.ImgSize % c.PatchSize <> 0 ->
               Some(sprintf "img_size (%d) must be a multiple of patch_size (%d)" c.ImgSize c.PatchSize)
           | Some h ->
               match HybridConfig.validate h with
               | Some e -> Some e
               | None ->
                   let f = HybridConfig.featureSize h (max c.ImgSize 1)
                   if c.PatchSize >= 1 && f % c.PatchSize <> 0 then
                       Some(sprintf "the hybrid stem's %dx%d feature map at img_size %d is not a multiple of patch_size (%d)" f f c.ImgSize c.PatchSize)
                   else None
           | None -> None)
          (if c.NumHeads >= 1 && c.EmbedDim % c.NumHeads <> 0 then
               Some(sprintf "embed_dim (%d) must be divisible by num_heads (%d)" c.EmbedDim c.NumHeads)
           else None)
          (if not (c.MlpRatio > 0.0) || hidden c < 1 then Some(sprintf "mlp_ratio must be > 0, got %g" c.MlpRatio) else None)
          rate "drop_rate" c.DropRate
          rate "attn_drop_rate" c.AttnDropRate
          rate "drop_path_rate" c.DropPathRate
          (if not (c.NormEps > 0.0) then Some(sprintf "norm_eps must be > 0, got %g" c.NormEps) else None)
          (match validateDepth c.Depth c.Pattern with
           | Ok _ -> None
           | Error e -> Some e)
          (if expand c.Pattern |> List.contains Sparse then
               match MoeConfig.validate c.Moe with
               | Ok _ -> None
               | Error e -> Some e
           else None) ]
        |> List.choose id
        |> function
            | [] -> Ok c
            | e :: _ -> Error e

/// DomainBed's CNN baselines (ERM).
type CnnKind =
    /// torchvision's ResNet-50 with BatchNorm frozen (DomainBed's freeze_bn) and dropout on the pooled features.
    | ResNet50
    /// DomainBed's MNIST_CNN: four 3x3 convolutions with GroupNorm, mean-pooled (any input size).
    | MnistCnn

/// A CNN baseline with its classifier.
type CnnConfig =
    { Kind: CnnKind
      InChans: int
      NumClasses: int
      /// The input size its preprocessing produces (square).
      ImgSize: int }

module CnnKind =
    /// The name of the backbone in registries and model files.
    let name = function ResNet50 -> "resnet50" | MnistCnn -> "mnist_cnn"

module CnnConfig =
    let validate (c: CnnConfig) : Result<CnnConfig, string> =
        let pos name (v: int) = if v >= 1 then None else Some(sprintf "%s must be >= 1, got %d" name v)
        [ pos "in_chans" c.InChans; pos "num_classes" c.NumClasses; pos "img_size" c.ImgSize ]
        |> List.choose id
        |> function
            | [] -> Ok c
            | e :: _ -> Error e

/// What a model is: a ViT (dense, SF-MoE, GMoE, hybrid) or a CNN baseline.
type Architecture =
    | VitArch of VitConfig
    | CnnArch of CnnConfig

module Architecture =
    /// The backbone's name in model files: "vit", "resnet50" or "mnist_cnn".
    let backbone = function VitArch _ -> "vit" | CnnArch c -> CnnKind.name c.Kind
    let numClasses = function VitArch c -> c.NumClasses | CnnArch c -> c.NumClasses
    let inChans = function VitArch c -> c.InChans | CnnArch c -> c.InChans
    let imgSize = function VitArch c -> c.ImgSize | CnnArch c -> c.ImgSize
    let validate = function
        | VitArch c -> VitConfig.validate c |> Result.map VitArch
        | CnnArch c -> CnnConfig.validate c |> Result.map CnnArch
