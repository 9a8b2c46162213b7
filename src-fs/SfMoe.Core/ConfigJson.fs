/// Model configs as JSON (snake_case keys, more keys allowed), so experiments and tools can state a model
/// without code. Every error names the key at fault. A "model" key starts from a registry variant; the other
/// keys override it. Without "model", img_size, patch_size, embed_dim, depth, num_heads and num_classes are
/// required and the rest take timm's defaults (and SF-MoE's for "moe").
module SfMoe.Core.ConfigJson

open System
open System.IO
open System.Text.Json
open SfMoe.Core.Pattern
open SfMoe.Core.Config
open SfMoe

let private fail fmt = Fail.config fmt

let private kindName (k: JsonValueKind) =
    match k with
    | JsonValueKind.Number -> "a number"
    | JsonValueKind.String -> "a string"
    | JsonValueKind.True | JsonValueKind.False -> "a boolean"
    | JsonValueKind.Object -> "an object"
    | JsonValueKind.Array -> "an array"
    | _ -> "null"

type private Obj(path: string, el: JsonElement) =
    member _.Path = path
    member _.Key(k: string) = if path = "" then k else path + "." + k
    member _.TryGet(k: string) =
        match el.TryGetProperty k with
        | true, v when v.ValueKind <> JsonValueKind.Null -> Some v
        | _ -> None
    member this.Int(k: string) =
        this.TryGet k
        |> Option.map (fun v ->
            match v.ValueKind with
            | JsonValueKind.Number ->
                match v.TryGetInt32() with
                | true, i -> i
                | _ -> fail "%s must be an integer, got %s" (this.Key k) (v.GetRawText())
            | kd -> fail "%s must be an integer, got %s" (this.Key k) (kindName kd))
    member this.Float(k: string) =
        this.TryGet k
        |> Option.map (fun v ->
            match v.ValueKind with
            | JsonValueKind.Number -> v.GetDouble()
            | kd -> fail "%s must be a number, got %s" (this.Key k) (kindName kd))
    member this.Bool(k: string) =
        this.TryGet k
        |> Option.map (fun v ->
            match v.ValueKind with
            | JsonValueKind.True -> true
            | JsonValueKind.False -> false
            | kd -> fail "%s must be true or false, got %s" (this.Key k) (kindName kd))
    member this.String(k: string) =
        this.TryGet k
        |> Option.map (fun v ->
            match v.ValueKind with
            | JsonValueKind.String -> v.GetString()
            | kd -> fail "%s must be a string, got %s" (this.Key k) (kindName kd))
    member this.Choice(k: string, choices: (string * 'a) list) =
        this.String k
        |> Option.map (fun s ->
            match choices |> List.tryFind (fun (n, _) -> n = s) with
            | Some(_, v) -> v
            | None ->
                let names = choices |> List.map (fun (n, _) -> "\"" + n + "\"")
                fail "%s must be %s, got \"%s\"" (this.Key k) (String.Join(" or ", names)) s)
    member this.Capacity(k: string) =
        this.TryGet k
        |> Option.map (fun v ->
            match v.ValueKind with
            | JsonValueKind.Number -> Factor(v.GetDouble())
            | JsonValueKind.String when v.GetString() = "dropless" -> Dropless
            | JsonValueKind.String -> fail "%s must be a number > 0 or \"dropless\", got \"%s\"" (this.Key k) (v.GetString())
            | kd -> fail "%s must be a number > 0 or \"dropless\", got %s" (this.Key k) (kindName kd))
    member this.IntList(k: string) =
        this.TryGet k
        |> Option.map (fun v ->
            if v.ValueKind <> JsonValueKind.Array then fail "%s must be an array of integers, got %s" (this.Key k) (kindName v.ValueKind)
            [ for x in v.EnumerateArray() do
                  match x.ValueKind, x.TryGetInt32() with
                  | JsonValueKind.Number, (true, i) -> yield i
                  | _ -> fail "%s must be an array of integers, got %s" (this.Key k) (v.GetRawText()) ])
    /// Present and explicitly null (as opposed to absent).
    member _.IsNull(k: string) =
        match el.TryGetProperty k with
        | true, v -> v.ValueKind = JsonValueKind.Null
        | _ -> false
    member this.Obj(k: string) =
        this.TryGet k
        |> Option.map (fun v ->
            if v.ValueKind <> JsonValueKind.Object then fail "%s must be an object, got %s" (this.Key k) (kindName v.ValueKind)
            Obj(this.Key k, v))

/// The names of the choices in JSON (and on the command line). A case's own setting (projection size, threshold,
/// minimum capacity) is a key of its own; these names build a case from it.
let routers = [ "linear", (fun (_: int) -> LinearRouter); "cosine", CosineRouter ]
let policies = [ "all", (fun (_: float) -> SecondAll); "none", (fun (_: float) -> SecondNone); "threshold", SecondThreshold; "random", SecondRandom ]
let scopes = [ "image", PerImage; "batch", (fun (_: int) -> PerBatch) ]
let auxLosses = [ "gshard", GShardLoss; "load_importance", LoadImportanceLoss ]

let routerName = function LinearRouter -> "linear" | CosineRouter _ -> "cosine"
let policyName = function SecondAll -> "all" | SecondNone -> "none" | SecondThreshold _ -> "threshold" | SecondRandom _ -> "random"
let scopeName = function PerImage _ -> "image" | PerBatch -> "batch"
let private auxLossName = function GShardLoss -> "gshard" | LoadImportanceLoss -> "load_importance"

/// A policy by name, keeping `current`'s threshold (or SF-MoE's default) for the threshold and random policies.
let policyNamed (current: SecondPolicy) (make: float -> SecondPolicy) =
    make (defaultArg (SecondPolicy.threshold current) SecondPolicy.defaultThreshold)

let private moeOf (o: Obj) (b: MoeConfig) : MoeConfig =
    let d (x: 'a option) (dflt: 'a) = defaultArg x dflt
    let router =
        let proj = match b.Router with CosineRouter p -> p | LinearRouter -> RouterKind.defaultProjDim
        let make = d (o.Choice("router", routers)) (match b.Router with LinearRouter -> (fun _ -> LinearRouter) | CosineRouter _ -> CosineRouter)
        make (d (o.Int "cosine_proj_dim") proj)
    let policy =
        let make = d (o.Choice("second_policy", policies)) (fun t -> match b.SecondPolicy with SecondThreshold _ -> SecondThreshold t | SecondRandom _ -> SecondRandom t | p -> p)
        make (d (o.Float "second_threshold") (defaultArg (SecondPolicy.threshold b.SecondPolicy) SecondPolicy.defaultThreshold))
    let scope =
        let minCap = match b.Scope with PerImage c -> c | PerBatch -> CapacityScope.defaultMinCapacity
        let make = d (o.Choice("capacity_scope", scopes)) (match b.Scope with PerImage _ -> PerImage | PerBatch -> (fun _ -> PerBatch))
        make (d (o.Int "min_capacity") minCap)
    { NumExperts = d (o.Int "num_experts") b.NumExperts
      TopK = d (o.Int "top_k") b.TopK
      Router = router
      SecondPolicy = policy
      CapacityTrain = d (o.Capacity "capacity_factor_train") b.CapacityTrain
      CapacityEval = d (o.Capacity "capacity_factor_eval") b.CapacityEval
      Scope = scope
      BatchPrioritized = d (o.Bool "batch_prioritized") b.BatchPrioritized
      GateNoise = d (o.Float "gate_noise") b.GateNoise
      AuxLoss = d (o.Choice("aux_loss", auxLosses)) b.AuxLoss
      AuxLossWeight = d (o.Float "aux_loss_weight") b.AuxLossWeight
      ExpertBias = d (o.Bool "expert_bias") b.ExpertBias
      ExpertDropout = d (o.Float "expert_dropout") b.ExpertDropout }

let private hybridOf (o: Obj) (b: HybridConfig option) : HybridConfig option =
    let k = "hybrid_backbone"
    if o.IsNull k then None
    else
        match o.TryGet k with
        | None -> b
        | Some v when v.ValueKind = JsonValueKind.String ->
            match HybridConfig.presets |> List.tryFind (fun (n, _) -> n = v.GetString()) with
            | Some(_, h) -> Some h
            | None -> fail "%s must be \"r26\", \"r50\", null or an object, got \"%s\"" (o.Key k) (v.GetString())
        | Some v when v.ValueKind = JsonValueKind.Object ->
            let h = Obj(o.Key k, v)
            let start = defaultArg b HybridConfig.r26
            Some
                { Layers = defaultArg (h.IntList "layers") start.Layers
                  Channels = defaultArg (h.IntList "channels") start.Channels
                  StemChannels = defaultArg (h.Int "stem_channels") start.StemChannels
                  NumGroups = defaultArg (h.Int "num_groups") start.NumGroups }
        | Some v -> fail "%s must be \"r26\", \"r50\", null or an object, got %s" (o.Key k) (kindName v.ValueKind)

/// Parse and validate a config from a JSON element; `resolveModel` looks up the optional "model" key.
let ofElement (resolveModel: string -> Result<VitConfig, string>) (el: JsonElement) : VitConfig =
    if el.ValueKind <> JsonValueKind.Object then fail "a model config must be a JSON object, got %s" (kindName el.ValueKind)
    let o = Obj("", el)
    let baseCfg =
        match o.String "model" with
        | Some name ->
            match resolveModel name with
            | Ok c -> Some c
            | Error e -> fail "model: %s" e
        | None -> None
    let req (k: string) (v: int option) (fromBase: VitConfig -> int) =
        match v, baseCfg with
        | Some x, _ -> x
        | None, Some b -> fromBase b
        | None, None -> fail "%s is required (or name a registry model with \"model\")" k
    let embed = req "embed_dim" (o.Int "embed_dim") (fun b -> b.EmbedDim)
    let depth = req "depth" (o.Int "depth") (fun b -> b.Depth)
    let heads = req "num_heads" (o.Int "num_heads") (fun b -> b.NumHeads)
    let b = match baseCfg with Some b -> b | None -> VitConfig.create embed depth heads
    let d (x: 'a option) (dflt: 'a) = defaultArg x dflt
    let pattern =
        match o.String "pattern" with
        | Some p ->
            match resolve p with
            | Ok p -> p
            | Error e -> fail "pattern: %s" (string e)
        | None -> if depth = b.Depth then b.Pattern else dense depth
    let moeBase =
        match o.Obj "moe" with
        | Some m ->
            // A cosine router without a base model starts from GMoE's defaults, a linear one from SF-MoE's.
            let start =
                match baseCfg, m.String "router" with
                | None, Some "cosine" -> MoeConfig.gmoe
                | _ -> b.Moe
            moeOf m start
        | None -> b.Moe
    let cfg =
        { ImgSize = req "img_size" (o.Int "img_size") (fun b -> b.ImgSize)
          PatchSize = req "patch_size" (o.Int "patch_size") (fun b -> b.PatchSize)
          InChans = d (o.Int "in_chans") b.InChans
          EmbedDim = embed
          Depth = depth
          NumHeads = heads
          MlpRatio = d (o.Float "mlp_ratio") b.MlpRatio
          NumClasses = req "num_classes" (o.Int "num_classes") (fun b -> b.NumClasses)
          Distilled = d (o.Bool "distilled") b.Distilled
          QkvBias = d (o.Bool "qkv_bias") b.QkvBias
          DropRate = d (o.Float "drop_rate") b.DropRate
          AttnDropRate = d (o.Float "attn_drop_rate") b.AttnDropRate
          DropPathRate = d (o.Float "drop_path_rate") b.DropPathRate
          NormEps = d (o.Float "norm_eps") b.NormEps
          Pattern = pattern
          Moe = moeBase
          Hybrid = hybridOf o b.Hybrid }
    match VitConfig.validate cfg with
    | Ok c -> c
    | Error e -> fail "%s" e

/// Parse a config from JSON text.
let parse (resolveModel: string -> Result<VitConfig, string>) (json: string) : VitConfig =
    let doc =
        try JsonDocument.Parse(json, JsonDocumentOptions(CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true))
        with :? JsonException as e -> fail "invalid JSON: %s" e.Message
    use doc = doc
    ofElement resolveModel doc.RootElement

let private capJson (w: Utf8JsonWriter) (k: string) (c: Capacity) =
    match c with
    | Factor f -> w.WriteNumber(k, f)
    | Dropless -> w.WriteString(k, "dropless")

/// Write a config's keys into an open JSON object.
let writeMembers (w: Utf8JsonWriter) (c: VitConfig) =
    w.WriteNumber("img_size", c.ImgSize)
    w.WriteNumber("patch_size", c.PatchSize)
    w.WriteNumber("in_chans", c.InChans)
    w.WriteNumber("embed_dim", c.EmbedDim)
    w.WriteNumber("depth", c.Depth)
    w.WriteNumber("num_heads", c.NumHeads)
    w.WriteNumber("mlp_ratio", c.MlpRatio)
    w.WriteNumber("num_classes", c.NumClasses)
    w.WriteBoolean("distilled", c.Distilled)
    w.WriteBoolean("qkv_bias", c.QkvBias)
    w.WriteNumber("drop_rate", c.DropRate)
    w.WriteNumber("attn_drop_rate", c.AttnDropRate)
    w.WriteNumber("drop_path_rate", c.DropPathRate)
    w.WriteNumber("norm_eps", c.NormEps)
    w.WriteString("pattern", print c.Pattern)
    match c.Hybrid with
    | None -> ()
    | Some h ->
        match HybridConfig.presets |> List.tryFind (fun (_, p) -> p = h) with
        | Some(name, _) -> w.WriteString("hybrid_backbone", name)
        | None ->
            w.WriteStartObject "hybrid_backbone"
            w.WriteStartArray "layers"
            for n in h.Layers do w.WriteNumberValue n
            w.WriteEndArray()
            w.WriteStartArray "channels"
            for n in h.Channels do w.WriteNumberValue n
            w.WriteEndArray()
            w.WriteNumber("stem_channels", h.StemChannels)
            w.WriteNumber("num_groups", h.NumGroups)
            w.WriteEndObject()
    let m = c.Moe
    w.WriteStartObject "moe"
    w.WriteNumber("num_experts", m.NumExperts)
    w.WriteNumber("top_k", m.TopK)
    w.WriteString("router", routerName m.Router)
    w.WriteString("second_policy", policyName m.SecondPolicy)
    SecondPolicy.threshold m.SecondPolicy |> Option.iter (fun t -> w.WriteNumber("second_threshold", t))
    capJson w "capacity_factor_train" m.CapacityTrain
    capJson w "capacity_factor_eval" m.CapacityEval
    match m.Scope with
    | PerImage c -> w.WriteNumber("min_capacity", c)
    | PerBatch -> ()
    w.WriteString("capacity_scope", scopeName m.Scope)
    w.WriteBoolean("batch_prioritized", m.BatchPrioritized)
    w.WriteNumber("gate_noise", m.GateNoise)
    w.WriteString("aux_loss", auxLossName m.AuxLoss)
    w.WriteNumber("aux_loss_weight", m.AuxLossWeight)
    w.WriteBoolean("expert_bias", m.ExpertBias)
    w.WriteNumber("expert_dropout", m.ExpertDropout)
    match m.Router with
    | CosineRouter p -> w.WriteNumber("cosine_proj_dim", p)
    | LinearRouter -> ()
    w.WriteEndObject()

/// A config as JSON text (round-trips through `parse`).
let toJson (indented: bool) (c: VitConfig) : string =
    use ms = new MemoryStream()
    do
        use w = new Utf8JsonWriter(ms, JsonWriterOptions(Indented = indented))
        w.WriteStartObject()
        writeMembers w c
        w.WriteEndObject()
    Text.Encoding.UTF8.GetString(ms.ToArray())
