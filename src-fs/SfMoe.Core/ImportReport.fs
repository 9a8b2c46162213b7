/// What a pretrained import did with every key (loaded, renamed, resampled, re-initialised, upcycled, initialised,
/// ignored), and the report as text lines.
module SfMoe.Core.ImportReport

open System

/// What a load did with every key.
type Report =
    { /// Network keys copied from the checkpoint unchanged.
      Loaded: string list
      /// Checkpoint name -> network name, where they differ.
      Renamed: (string * string) list
      /// pos_embed: key, checkpoint shape, network shape (bicubic over the grid).
      Resampled: (string * int64[] * int64[]) list
      /// Network keys left at their init although task-specific (heads): key, why.
      Reinitialised: (string * string) list
      /// Dense FFN key -> expert key it was copied into (all E experts).
      Upcycled: (string * string) list
      /// Network keys the checkpoint cannot provide, left at their init: key, why.
      Initialised: (string * string) list
      /// Checkpoint keys not used: key, why.
      Ignored: (string * string) list
      /// What else the file holds.
      Info: (string * string) list
      /// Assumptions made (an inferred model).
      Notes: string list }

/// A shape as "[a, b, c]".
let internal shapeStr (s: int64[]) = "[" + String.Join(", ", s) + "]"

/// The report as text lines. `verbose` lists every loaded and renamed key; otherwise their counts come with
/// `listHint`, which says how to list them (the caller's wording: an API member or a command-line flag).
let describe (listHint: string) (verbose: bool) (r: Report) : string list =
    let section (title: string) (items: string list) =
        [ yield sprintf "%s: %d" title items.Length
          for i in items do yield "  " + i ]
    [ yield sprintf "loaded: %d tensors%s" r.Loaded.Length (if verbose || r.Loaded.IsEmpty then "" else sprintf " (%s)" listHint)
      if verbose then for k in r.Loaded do yield "  " + k
      if not r.Renamed.IsEmpty then
          yield sprintf "renamed: %d checkpoint keys%s" r.Renamed.Length (if verbose then "" else sprintf " (%s)" listHint)
          if verbose then for a, b in r.Renamed do yield sprintf "  %s -> %s" a b
      yield! section "resampled" [ for k, a, b in r.Resampled -> sprintf "%s %s -> %s (bicubic over the patch grid)" k (shapeStr a) (shapeStr b) ]
      yield! section "re-initialised" [ for k, why in r.Reinitialised -> sprintf "%s (%s)" k why ]
      yield! section "upcycled" [ for a, b in r.Upcycled -> sprintf "%s -> %s (copied into every expert)" a b ]
      yield! section "initialised" [ for k, why in r.Initialised -> sprintf "%s (%s)" k why ]
      yield! section "ignored" [ for k, why in r.Ignored -> sprintf "%s (%s)" k why ]
      if not r.Info.IsEmpty then
          yield "also in the file:"
          for k, v in r.Info do yield sprintf "  %s: %s" k v
      for n in r.Notes do yield "note: " + n ]
