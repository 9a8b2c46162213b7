/// Loading named tensors into a module: strict by default (missing, unexpected and mis-shaped keys are all
/// listed in one error), copying values in place so parameters keep their identity.
module SfMoe.Core.Weights

open System
open TorchSharp
open SfMoe
open SfMoe.Core.Tensors

type Module = torch.nn.Module

/// What a load found.
type LoadReport =
    { Loaded: string list
      Missing: string list
      Unexpected: string list
      /// key, expected shape, found shape
      Mismatched: (string * int64[] * int64[]) list }

let private shapeStr (s: int64[]) = "[" + String.Join(", ", s) + "]"

let describe (r: LoadReport) =
    [ if not r.Missing.IsEmpty then yield sprintf "missing keys: %s" (String.Join(", ", r.Missing))
      if not r.Unexpected.IsEmpty then yield sprintf "unexpected keys: %s" (String.Join(", ", r.Unexpected))
      for k, e, f in r.Mismatched do
          yield sprintf "%s: expected shape %s, found %s" k (shapeStr e) (shapeStr f) ]
    |> String.concat "; "

/// Compare names and shapes without copying anything.
let check (m: Module) (src: (string * Tensor) list) : LoadReport =
    let target = m.state_dict ()
    let srcMap = dict src
    let mism =
        [ for KeyValue(k, t) in target do
              match srcMap.TryGetValue k with
              | true, s when s.shape <> t.shape -> yield k, t.shape, s.shape
              | _ -> () ]
    { Loaded = [ for KeyValue(k, _) in target do if srcMap.ContainsKey k then yield k ]
      Missing = [ for KeyValue(k, _) in target do if not (srcMap.ContainsKey k) then yield k ]
      Unexpected = [ for k, _ in src do if not (target.ContainsKey k) then yield k ]
      Mismatched = mism }

/// Copy `src` into the module's parameters and buffers. With `strict`, any missing or unexpected key is an
/// error; a shape mismatch always is. Nothing is copied unless the whole load is valid.
let load (strict: bool) (m: Module) (src: (string * Tensor) list) : LoadReport =
    let r = check m src
    let bad = not r.Mismatched.IsEmpty || (strict && (not r.Missing.IsEmpty || not r.Unexpected.IsEmpty))
    if bad then raise (CheckpointException(describe r))
    let target = m.state_dict ()
    use _ = torch.no_grad ()
    for k, s in src do
        match target.TryGetValue k with
        | true, t -> t.copy_(s) |> ignore
        | _ -> ()
    r
