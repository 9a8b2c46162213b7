/// Library messages name API members (`TrainOptions.Resume`, `Datasets.Open(dataDir)`), never command-line flags; the
/// CLI says the same thing in its own words. A table of renames, each built from an API member (a property quotation,
/// checked by the compiler) and an Argu case (whose flag Argu names), rewrites a message for the user.
module SfMoe.Cli.ApiNames

open System
open System.Collections.Generic
open System.Reflection
open System.Text.RegularExpressions
open Microsoft.FSharp.Quotations
open Microsoft.FSharp.Quotations.Patterns
open Argu

/// The property a quotation such as <@ fun (o: TrainOptions) -> o.Resume @> reads.
let propertyOf (e: Expr<'o -> 'a>) : PropertyInfo =
    match e with
    | Lambda(_, PropertyGet(_, p, _)) -> p
    | _ -> invalidArg "e" (sprintf "expected fun o -> o.Member, got %A" e)

/// How library messages name a property: "TrainOptions.Resume" (the type that declares it, so members of a base class
/// such as DatasetAnalysisOptions are named once).
let tokenOf (p: PropertyInfo) = p.DeclaringType.Name + "." + p.Name

/// The flag of an Argu case as users type it ("--output-dir"; a main command's placeholder for positional ones).
let flagOf (c: ArgumentCaseInfo) = c.Name.Value

/// What a library message says and what the CLI says instead.
type Rename = { Api: string; Cli: string }

/// A property of an options class and the flag that sets it.
let memberFlag (p: Expr<'o -> 'a>) (c: ArgumentCaseInfo) = { Api = tokenOf (propertyOf p); Cli = flagOf c }

/// Member tokens of a message: "Type.Member", or "Type.Method(param)" for a parameter.
let private token = Regex(@"\b[A-Z][A-Za-z0-9]*\.[A-Z][A-Za-z0-9]*(\([a-z][A-Za-z0-9]*\))?", RegexOptions.CultureInvariant)

/// How the CLI rewrites library messages: member tokens by table, API calls the message suggests (e.g.
/// `Downloader.Fetch("PACS", "/data")`) by pattern, and fixed phrases.
type Rewrites =
    { Tokens: IReadOnlyDictionary<string, string>
      Calls: (Regex * (Match -> string)) list
      Phrases: (string * string) list }

/// The token table of a list of renames; a token renamed two ways is a programming error.
let tokens (renames: Rename seq) : IReadOnlyDictionary<string, string> =
    let d = Dictionary<string, string>(StringComparer.Ordinal)
    for r in renames do
        match d.TryGetValue r.Api with
        | true, other when other <> r.Cli -> invalidOp (sprintf "%s is renamed both %s and %s" r.Api other r.Cli)
        | _ -> d[r.Api] <- r.Cli
    d

/// A library message in the CLI's words: calls, then tokens, then phrases; anything unknown stays as it is.
let rewrite (r: Rewrites) (message: string) =
    let called = r.Calls |> List.fold (fun (m: string) (re, f) -> re.Replace(m, MatchEvaluator f)) message
    let named =
        token.Replace(called, MatchEvaluator(fun m ->
            match r.Tokens.TryGetValue m.Value with
            | true, cli -> cli
            | _ -> m.Value))
    r.Phrases |> List.fold (fun (m: string) (api, cli) -> m.Replace(api, cli)) named
