/// Weights out to the PyTorch world, under the names PyTorch models use, so that `model.load_state_dict(sd)` takes
/// them: a ViT keeps timm's names (patch_embed.*, cls_token, dist_token, pos_embed, blocks.{i}.*, norm.*, head.*,
/// head_dist.*; a hybrid's stem under patch_embed.backbone.*); sparse blocks use the lucidrains layout of SF-MoE's
/// code: mlp.gate.w_gating [D, E], mlp.experts.w1 [E, D, H] and w2 [E, H, D] applied as x @ w (plus b1 [E, H] and
/// b2 [E, D] with expert biases; the cosine router's mlp.gate.cosine_projector.*, sim_matrix [P, E] and temperature
/// [1]); the ResNet-50 has torchvision's names (conv1.*, bn1.*, layer{1-4}.*, fc.*).
///   timm     .safetensors (safetensors.torch.load_file), metadata {"format": "pt", "sfmoe_model_config": ...}
///   pytorch  a torch.save zip file of an OrderedDict (torch.load)
module SfMoe.Core.Export

open System
open TorchSharp
open SfMoe.Core.Tensors

type Format =
    | TimmSafetensors
    | PyTorchPth

module Format =
    let all = [ "timm", TimmSafetensors; "pytorch", PyTorchPth ]
    let tryParse (s: string) =
        all |> List.tryFind (fun (n, _) -> String.Equals(n, (if isNull s then "" else s.Trim()), StringComparison.OrdinalIgnoreCase)) |> Option.map snd

/// A network's tensors under PyTorch's names (views of the parameters; do not dispose them).
let stateDict (net: Networks.Network) : (string * Tensor) list =
    let sd = [ for KeyValue(k, v) in net.Module.state_dict () -> k, v ]
    match net with
    | Networks.ResNetNet _ ->
        sd
        |> List.map (fun (k, v) ->
            if k.StartsWith "featurizer.network." then k.Substring "featurizer.network.".Length, v
            elif k.StartsWith "classifier." then "fc." + k.Substring "classifier.".Length, v
            else k, v)
    | _ -> sd

/// Write a network's weights to `stream` in `format`; `name` (the file's path) starts every message (and names the
/// .pth's archive folder); `metadata` goes into the safetensors header (the .pth holds tensors only).
let write (format: Format) (name: string) (net: Networks.Network) (metadata: Map<string, string>) (stream: IO.Stream) : unit =
    let sd = stateDict net
    match format with
    | TimmSafetensors -> SafeTensors.write name (metadata.Add("format", "pt")) sd stream
    | PyTorchPth -> TorchFile.write name sd stream
