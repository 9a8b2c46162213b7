/// Named model variants in timm's grammar (`<family>_<size>_patch<P>_<img>`). Each variant is one row of
/// data; `create` applies the row to a size table. Unknown names get a list of near names.
module SfMoe.Core.Registry

open System
open SfMoe.Core.Pattern
open SfMoe.Core.Config

/// Backbone sizes: embed dim, depth, heads (timm / DeiT).
let sizes =
    dict [ "test", (32, 4, 4)
           "tiny", (192, 12, 3)
           "small", (384, 12, 6)
           "base", (768, 12, 12) ]

/// One registry row.
type ModelDef =
    { Name: string
      Size: string
      PatchSize: int
      ImgSize: int
      Distilled: bool
      /// A pattern or a preset name (see Pattern.presets); "vit" means all fusion blocks.
      Pattern: string
      Moe: MoeConfig
      DropPathRate: float
      NumClasses: int
      Description: string
      /// The ResNetV2 stem of a hybrid (patch_size is then the patch size on its feature map, 1 in timm).
      Hybrid: HybridConfig option }

let private row name size patch img distilled pattern moe dpr classes desc =
    { Name = name; Size = size; PatchSize = patch; ImgSize = img; Distilled = distilled; Pattern = pattern
      Moe = moe; DropPathRate = dpr; NumClasses = classes; Description = desc; Hybrid = None }

let private hybrid h (d: ModelDef) = { d with Hybrid = Some h }

let private sf = MoeConfig.sfmoe
let private gm = MoeConfig.gmoe

/// The ViT variants, one row each.
let vits : ModelDef list =
    [ row "vit_tiny_patch16_224" "tiny" 16 224 false "vit" sf 0.0 1000 "ViT-Ti/16 (timm)"
      row "vit_small_patch16_224" "small" 16 224 false "vit" sf 0.0 1000 "ViT-S/16 (timm)"
      row "vit_base_patch16_224" "base" 16 224 false "vit" sf 0.0 1000 "ViT-B/16 (timm)"
      row "deit_tiny_patch16_224" "tiny" 16 224 false "vit" sf 0.0 1000 "DeiT-Ti/16"
      row "deit_small_patch16_224" "small" 16 224 false "vit" sf 0.0 1000 "DeiT-S/16 (GMoE's backbone)"
      row "deit_base_patch16_224" "base" 16 224 false "vit" sf 0.0 1000 "DeiT-B/16"
      row "deit_tiny_distilled_patch16_224" "tiny" 16 224 true "vit" sf 0.0 1000 "DeiT-Ti/16 distilled (cls + dist tokens)"
      row "deit_small_distilled_patch16_224" "small" 16 224 true "vit" sf 0.0 1000 "DeiT-S/16 distilled (SF-MoE's backbone)"
      row "deit_base_distilled_patch16_224" "base" 16 224 true "vit" sf 0.0 1000 "DeiT-B/16 distilled"
      row "sfmoe_small_patch16_224" "small" 16 224 true "sfmoe-dg" sf 0.0 1000 "SF-MoE as released: DeiT-S distilled, MoE at blocks 5, 11 (E=4, top-2)"
      row "sfmoe_paper_small_patch16_224" "small" 16 224 true "sfmoe" sf 0.0 1000 "SF-MoE with the paper's [S,F]x6 pattern"
      row "gmoe_small_patch16_224" "small" 16 224 false "gmoe" gm 0.1 1000 "GMoE-S/16: DeiT-S, cosine top-1, E=6 at blocks 8, 10"
      row "vit_test_patch8_32" "test" 8 32 false "Fx4" sf 0.0 10 "tiny dense ViT for tests and examples (32x32)"
      row "sfmoe_test_patch8_32" "test" 8 32 true "[F,S]x2" sf 0.0 10 "tiny SF-MoE for tests and examples (32x32, E=4, top-2)"
      row "gmoe_test_patch8_32" "test" 8 32 false "[F,S]x2" { gm with Router = CosineRouter 32 } 0.1 10 "tiny GMoE for tests (32x32, cosine top-1)"
      row "deit_test_distilled_patch8_32" "test" 8 32 true "Fx4" sf 0.0 10 "tiny distilled ViT for tests (32x32)"
      row "vit_small_r26_s32_224" "small" 1 224 false "vit" sf 0.0 1000 "R26+ViT-S/32 hybrid (timm; augreg weights want mean = std = 0.5): Hybrid ViT, the dense twin of hybrid_sfmoe"
      |> hybrid HybridConfig.r26
      row "vit_base_r50_s16_224" "base" 1 224 false "vit" sf 0.0 1000 "R50+ViT-B/16 hybrid (timm, the ViT paper's hybrid)"
      |> hybrid HybridConfig.r50
      row "hybrid_sfmoe_small_r26_s32_224" "small" 1 224 false "sfmoe-dg" { sf with NumExperts = 6 } 0.0 1000 "Hybrid SF-MoE as released: R26+ViT-S/32, MoE at blocks 5, 11 (E=6, top-2)"
      |> hybrid HybridConfig.r26 ]

/// The config of a registry row.
let toConfig (d: ModelDef) : Result<VitConfig, string> =
    let dim, depth, heads = sizes[d.Size]
    let pattern =
        if d.Pattern = "vit" then Ok(dense depth)
        else resolve d.Pattern |> Result.mapError string
    pattern
    |> Result.bind (fun p ->
        VitConfig.validate
            { VitConfig.create dim depth heads with
                ImgSize = d.ImgSize
                PatchSize = d.PatchSize
                Distilled = d.Distilled
                Pattern = p
                Moe = d.Moe
                DropPathRate = d.DropPathRate
                NumClasses = d.NumClasses
                Hybrid = d.Hybrid })

/// Edit distance, for "did you mean" suggestions.
let private distance (a: string) (b: string) =
    let d = Array2D.init (a.Length + 1) (b.Length + 1) (fun i j -> if i = 0 then j elif j = 0 then i else 0)
    for i in 1 .. a.Length do
        for j in 1 .. b.Length do
            let cost = if a[i - 1] = b[j - 1] then 0 else 1
            d[i, j] <- min (min (d[i - 1, j] + 1) (d[i, j - 1] + 1)) (d[i - 1, j - 1] + cost)
    d[a.Length, b.Length]

/// How a CNN baseline's input size is set.
type InputSize =
    /// Always this size (DomainBed resizes images to 224 for the ResNet).
    | Fixed of int
    /// The data's own size (MNIST_CNN pools globally), this one when no data is given.
    | FromData of fallback: int

/// A CNN baseline row.
type CnnDef =
    { Name: string
      Kind: CnnKind
      InChans: int
      NumClasses: int
      InputSize: InputSize
      Description: string }

/// DomainBed's ERM baselines.
let cnns : CnnDef list =
    [ { Name = "resnet50"; Kind = ResNet50; InChans = 3; NumClasses = 1000; InputSize = Fixed 224
        Description = "ResNet-50 (torchvision), BatchNorm frozen, dropout on the features: DomainBed's ERM for image datasets" }
      { Name = "mnist_cnn"; Kind = MnistCnn; InChans = 1; NumClasses = 10; InputSize = FromData 28
        Description = "DomainBed's MNIST_CNN (4 convolutions + GroupNorm): ERM for RotatedMNIST and ColoredMNIST" } ]

/// A registry row: a ViT variant or a CNN baseline.
type Entry =
    | Vit of ModelDef
    | Cnn of CnnDef

    member e.Name = match e with Vit d -> d.Name | Cnn d -> d.Name
    member e.Description = match e with Vit d -> d.Description | Cnn d -> d.Description

/// Every row: the ViT variants, then the CNN baselines.
let entries : Entry list = (vits |> List.map Vit) @ (cnns |> List.map Cnn)

let tryFind (name: string) = vits |> List.tryFind (fun d -> d.Name = name)

/// The row of a name; an unknown name lists the nearest names.
let tryEntry (name: string) : Result<Entry, string> =
    match entries |> List.tryFind (fun e -> e.Name = name) with
    | Some e -> Ok e
    | None ->
        let near =
            entries
            |> List.map (fun e -> e.Name)
            |> List.sortBy (fun n -> distance (name.ToLowerInvariant()) n)
            |> List.truncate 3
        Error(sprintf "unknown model %s; did you mean %s? (the registry lists them all)" name (String.Join(", ", near)))

/// The config of a named ViT variant; an unknown name lists the nearest names.
let tryCreate (name: string) : Result<VitConfig, string> =
    match tryEntry name with
    | Ok(Vit d) -> toConfig d
    | Ok(Cnn d) -> Error(sprintf "%s is a CNN baseline, not a ViT" d.Name)
    | Error e -> Error e
