/// Dense-to-MoE upcycling, explicit either way:
///   CopyDense - every expert of a sparse block starts as the dense block's FFN (fc1/fc2 and biases; GMoE);
///   KeepInit  - the experts and router keep their own init and the dense FFN of that block is dropped
///               (SF-MoE's released behaviour: timm's non-strict load ignores blocks.{5,11}.mlp.fc*).
/// The router always starts from its own init. Works on state dicts (importers) and on models.
module SfMoe.Core.Upcycle

open System.Text.RegularExpressions
open TorchSharp
open SfMoe.Core.Tensors
open SfMoe.Core.Pattern
open SfMoe.Core.Config

type ExpertInit =
    | CopyDense
    | KeepInit

/// What an upcycling did with each dense key of a sparse block.
type Report =
    { /// dense key -> expert key it was copied into
      Upcycled: (string * string) list
      /// dense keys left out (KeepInit, or a bias the experts do not have)
      Dropped: string list }

let private fc = Regex(@"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$")

/// Map a dense state dict onto a config with sparse blocks. Keys of fusion blocks and every non-FFN key pass
/// unchanged; the fc1/fc2 keys of sparse blocks become expert tensors (E copies) or are dropped.
let stateDict (c: VitConfig) (mode: ExpertInit) (dense: (string * Tensor) list) : (string * Tensor) list * Report =
    let kinds = VitConfig.kinds c
    let e = int64 c.Moe.NumExperts
    let mutable up, dropped = [], []
    let out =
        [ for name, t in dense do
              let m = fc.Match name
              let block = if m.Success then int m.Groups[1].Value else -1
              if not m.Success || block >= kinds.Length || kinds[block] = Fusion then yield name, t
              else
                  let prefix = sprintf "blocks.%d.mlp.experts." block
                  match mode, m.Groups[2].Value, m.Groups[3].Value with
                  | KeepInit, _, _ -> dropped <- name :: dropped
                  | CopyDense, "fc1", "weight" ->
                      up <- (name, prefix + "w1") :: up
                      use tt = t.t () // (D, H)
                      yield prefix + "w1", tt.unsqueeze(0L).expand(e, -1L, -1L).contiguous ()
                  | CopyDense, "fc2", "weight" ->
                      up <- (name, prefix + "w2") :: up
                      use tt = t.t () // (H, D)
                      yield prefix + "w2", tt.unsqueeze(0L).expand(e, -1L, -1L).contiguous ()
                  | CopyDense, layer, _ when c.Moe.ExpertBias ->
                      let key = prefix + (if layer = "fc1" then "b1" else "b2")
                      up <- (name, key) :: up
                      yield key, t.unsqueeze(0L).expand(e, -1L).contiguous ()
                  | CopyDense, _, _ -> dropped <- name :: dropped ]
    out, { Upcycled = List.rev up; Dropped = List.rev dropped }

/// A model with the sparse config `c`, every shared weight taken from `dense`, experts per `mode`.
/// The router (and with KeepInit the experts) keep the init drawn from `seed`.
let model (mode: ExpertInit) (dense: Vit.SfMoeVit) (c: VitConfig) (seed: int64 option) : Vit.SfMoeVit * Report =
    let sparse = new Vit.SfMoeVit(c, dense.Dd, seed)
    let src = [ for KeyValue(k, v) in dense.state_dict () -> k, v ]
    let mapped, report = stateDict c mode src
    // Non-strict on purpose: router keys (and experts with KeepInit) are missing; nothing may be unexpected.
    let r = Weights.load false sparse mapped
    if not r.Unexpected.IsEmpty then
        invalidArg "dense" (sprintf "the dense model has keys the sparse one lacks: %s" (System.String.Join(", ", r.Unexpected)))
    sparse, report
