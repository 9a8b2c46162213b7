/// Foreign state-dict names for sparse blocks, mapped onto SfMoe's (pure: names and tensors in, names and
/// tensors out). SF-MoE-DG (lucidrains) names are SfMoe's own: mlp.gate.w_gating [D,E], mlp.experts.w1 [E,D,H],
/// mlp.experts.w2 [E,H,D]. GMoE (tutel) names are mapped:
///   mlp.gates.0.{temperature, cosine_projector.*, sim_matrix} -> mlp.gate.*
///   mlp.experts.batched_fc1_w [E,H,D] -> mlp.experts.w1 [E,D,H] (transposed)
///   mlp.experts.batched_fc2_w [E,H,D] -> mlp.experts.w2 [E,H,D]
///   mlp.experts.batched_fc1_bias [E,H] -> mlp.experts.b1;  mlp.experts.batched_fc2_bias [E,D] -> mlp.experts.b2
///   mlp._num_global_experts (a buffer holding E) -> ignored (reported)
module SfMoe.Core.KeyMap

open System.Text.RegularExpressions
open SfMoe.Core.Tensors

/// The result of a mapping: tensors under SfMoe names, and the foreign keys deliberately dropped.
type Mapped =
    { Tensors: (string * Tensor) list
      Ignored: string list
      Renamed: (string * string) list }

let private tutel = Regex(@"^(.*\.mlp)\.(gates\.0\.(.+)|experts\.(batched_fc1_w|batched_fc2_w|batched_fc1_bias|batched_fc2_bias)|_num_global_experts)$")

/// Map GMoE/tutel keys of sparse blocks; other keys pass unchanged. New tensors are created only for transposes.
let fromAuthors (tensors: (string * Tensor) list) : Mapped =
    let mutable ignored = []
    let mutable renamed = []
    let out =
        [ for name, t in tensors do
              let m = tutel.Match name
              if not m.Success then yield name, t
              else
                  let prefix = m.Groups[1].Value
                  if m.Groups[3].Success then
                      let n = prefix + ".gate." + m.Groups[3].Value
                      renamed <- (name, n) :: renamed
                      yield n, t
                  elif m.Groups[4].Success then
                      let n, v =
                          match m.Groups[4].Value with
                          | "batched_fc1_w" -> prefix + ".experts.w1", t.transpose(1L, 2L).contiguous ()
                          | "batched_fc2_w" -> prefix + ".experts.w2", t
                          | "batched_fc1_bias" -> prefix + ".experts.b1", t
                          | _ -> prefix + ".experts.b2", t
                      renamed <- (name, n) :: renamed
                      yield n, v
                  else ignored <- name :: ignored ]
    { Tensors = out; Ignored = List.rev ignored; Renamed = List.rev renamed }
