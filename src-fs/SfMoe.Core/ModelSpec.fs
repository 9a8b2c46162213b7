/// One model resolution: "a registry name or a JSON config, plus overrides, plus the data it will see" becomes a
/// validated `Architecture` in `resolve`, the only place that does it. Every caller (API, trainer, profiler,
/// benchmarks, import, CLI) states what it wants as a `ModelSpec`. Errors are ConfigExceptions naming the name, key
/// or value at fault.
module SfMoe.Core.ModelSpec

open SfMoe
open SfMoe.Core.Config

/// Where the architecture comes from.
type Source =
    /// A registry name: a ViT variant or a CNN baseline.
    | Named of string
    /// A model config as JSON text (snake_case keys; a "model" key starts from a registry ViT).
    | Json of string
    /// An architecture in hand (a model file's, an inferred one).
    | Given of Architecture

/// The data a model will be trained or evaluated on.
type DataShape =
    { Classes: int
      Channels: int
      /// Image height (= width after resizing to square).
      Height: int }

/// What to build.
type Spec =
    { Source: Source
      /// A block pattern or preset replacing the ViT's (not for CNN baselines).
      Pattern: string option
      /// Classes of the head(s).
      NumClasses: int option
      /// Input size (square); a ViT's position embedding is sized for it.
      ImgSize: int option
      /// The data: sets classes and channels (a ViT keeps its input size, images are resized to it; a CNN whose
      /// input size follows the data takes the data's). Explicit NumClasses / ImgSize win over it.
      Data: DataShape option }

let ofSource (source: Source) =
    { Source = source; Pattern = None; NumClasses = None; ImgSize = None; Data = None }

let named (name: string) = ofSource (Named name)
let ofJson (json: string) = ofSource (Json json)
let given (arch: Architecture) = ofSource (Given arch)

let private fail fmt = Fail.config fmt

/// The ViT config of a JSON text (ConfigJson resolves its "model" key in the registry).
let parseVit (json: string) : VitConfig = ConfigJson.parse Registry.tryCreate json

let private ofEntry (e: Registry.Entry) : Architecture =
    match e with
    | Registry.Vit d ->
        match Registry.toConfig d with
        | Ok c -> VitArch c
        | Error err -> fail "%s: %s" d.Name err
    | Registry.Cnn d ->
        let size = match d.InputSize with Registry.Fixed s | Registry.FromData s -> s
        CnnArch { Kind = d.Kind; InChans = d.InChans; NumClasses = d.NumClasses; ImgSize = size }

/// Whether a CNN's input size follows the data (MNIST_CNN) rather than being fixed (ResNet-50).
let private sizeFollowsData (kind: CnnKind) =
    Registry.cnns |> List.exists (fun d -> d.Kind = kind && (match d.InputSize with Registry.FromData _ -> true | _ -> false))

/// Resolve and validate a spec.
let resolve (s: Spec) : Architecture =
    let arch =
        match s.Source with
        | Named name ->
            match Registry.tryEntry name with
            | Ok e -> ofEntry e
            | Error e -> fail "%s" e
        | Json json -> VitArch(parseVit json)
        | Given a -> a
    let classes = s.NumClasses |> Option.orElse (s.Data |> Option.map (fun d -> d.Classes))
    let chans = s.Data |> Option.map (fun d -> d.Channels)
    let arch =
        match arch with
        | VitArch c ->
            let c =
                match s.Pattern with
                | Some p ->
                    match Pattern.resolve p with
                    | Ok p -> { c with Pattern = p }
                    | Error e -> raise (Pattern.PatternException e)
                | None -> c
            VitArch
                { c with
                    NumClasses = defaultArg classes c.NumClasses
                    InChans = defaultArg chans c.InChans
                    ImgSize = defaultArg s.ImgSize c.ImgSize }
        | CnnArch c ->
            if s.Pattern.IsSome then
                fail "a block pattern applies to ViT models, not %s" (CnnKind.name c.Kind)
            let dataSize = if sizeFollowsData c.Kind then s.Data |> Option.map (fun d -> d.Height) else None
            CnnArch
                { c with
                    NumClasses = defaultArg classes c.NumClasses
                    InChans = defaultArg chans c.InChans
                    ImgSize = s.ImgSize |> Option.orElse dataSize |> Option.defaultValue c.ImgSize }
    match Architecture.validate arch with
    | Ok a -> a
    | Error e -> fail "%s" e

/// A registry name's ViT config (a CNN name or an unknown one is a ConfigException).
let vitNamed (name: string) : VitConfig =
    match resolve (named name) with
    | VitArch c -> c
    | CnnArch c -> fail "%s is a CNN baseline; a ViT model is needed here" (CnnKind.name c.Kind)

/// The architecture a model file's header describes: its backbone name, ViT config (JSON) and shape.
let ofHeader (backbone: string) (vitConfigJson: string option) (numClasses: int) (inChans: int) (imgSize: int) : Architecture =
    match backbone, vitConfigJson with
    | "vit", Some json -> VitArch(parseVit json)
    | "vit", None -> fail "a ViT model needs its config"
    | name, _ ->
        match Registry.cnns |> List.tryFind (fun d -> d.Name = name) with
        | Some d -> CnnArch { Kind = d.Kind; InChans = inChans; NumClasses = numClasses; ImgSize = imgSize }
        | None ->
            let known = "vit" :: (Registry.cnns |> List.map (fun d -> d.Name))
            fail "unknown backbone %s: expected %s" name (String.concat ", " known)

/// The ViT config as JSON for a model file's header (None for a CNN).
let vitJson (a: Architecture) : string option =
    match a with
    | VitArch c -> Some(ConfigJson.toJson false c)
    | CnnArch _ -> None

/// A spec from optional parts (for C#: null strings and nullables are "not given").
[<CompiledName("Create")>]
let create (source: Source) (pattern: string) (numClasses: System.Nullable<int>) (imgSize: System.Nullable<int>) (data: DataShape option) : Spec =
    { Source = source
      Pattern = Option.ofObj pattern
      NumClasses = Option.ofNullable numClasses
      ImgSize = Option.ofNullable imgSize
      Data = data }
