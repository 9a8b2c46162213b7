/// Block-pattern DSL: which blocks of the ViT are sparse (attention + MoE) and which are fusion (attention +
/// dense FFN). Paper notation "[S,F]x6" (SF-MoE Fig. 2); released code "Fx5,S,Fx5,S"; GMoE "Fx8,[S,F]x2".
///
///   pattern := term (','? term)*        commas between terms are optional: "SFSF" = "S,F,S,F"
///   term    := atom ('x' count)?        count: an integer >= 1
///   atom    := 'S' | 'F' | '[' pattern ']'
///
/// Spaces are allowed between tokens. Errors name the 1-based column of the construct at fault.
module SfMoe.Core.Pattern

open System
open System.Text

/// The kind of one transformer block.
type BlockKind =
    /// Attention + Mixture-of-Experts FFN (tokens routed to top-k experts).
    | Sparse
    /// Attention + dense FFN shared by all tokens.
    | Fusion

module BlockKind =
    let letter = function Sparse -> "S" | Fusion -> "F"

/// A parsed pattern: a non-empty sequence of terms.
type Pattern = { Terms: Term list }

/// An atom repeated `Count` (>= 1) times.
and Term = { Atom: Atom; Count: int }

and Atom =
    | Block of BlockKind
    | Group of Pattern

/// Upper bound on the expanded length, so that "[[Sx1000]x1000]x1000" is an error, not an out-of-memory.
let maxBlocks = 10000

/// A parse error at a 1-based column of the input.
type PatternError =
    { Input: string
      Column: int
      Message: string }
    override this.ToString() =
        sprintf "pattern \"%s\" at column %d: %s" this.Input this.Column this.Message

/// A pattern that does not parse; `Error` says where and why.
type PatternException(error: PatternError) =
    inherit SfMoe.ConfigException(error.ToString())
    member _.Error = error

/// Canonical text: terms separated by ',', counts as "xN" only when N > 1, groups in brackets, no spaces.
let rec print (p: Pattern) : string =
    p.Terms
    |> List.map (fun t ->
        let atom =
            match t.Atom with
            | Block k -> BlockKind.letter k
            | Group g -> "[" + print g + "]"
        if t.Count > 1 then sprintf "%sx%d" atom t.Count else atom)
    |> String.concat ","

/// Expanded length, computed without expanding (saturates above maxBlocks).
let rec length (p: Pattern) : int64 =
    p.Terms
    |> List.sumBy (fun t ->
        let n = match t.Atom with Block _ -> 1L | Group g -> length g
        min (int64 maxBlocks + 1L) (n * int64 t.Count))
    |> min (int64 maxBlocks + 1L)

/// The list of block kinds, shallow to deep.
let rec expand (p: Pattern) : BlockKind list =
    p.Terms
    |> List.collect (fun t ->
        let one = match t.Atom with Block k -> [ k ] | Group g -> expand g
        List.replicate t.Count one |> List.concat)

type private Parser(input: string) =
    let mutable i = 0
    member _.Pos = i
    member _.Peek = if i < input.Length then Some input[i] else None
    member _.Advance() = i <- i + 1
    member this.SkipSpaces() =
        while (match this.Peek with Some c -> Char.IsWhiteSpace c | None -> false) do
            this.Advance()
    member _.Fail(pos: int, msg: string) : 'a =
        raise (PatternException { Input = input; Column = pos + 1; Message = msg })
    member this.Found =
        match this.Peek with
        | Some c -> sprintf ", found '%c'" c
        | None -> ""

let private startsAtom (c: char option) =
    match c with
    | Some('S' | 'F' | '[') -> true
    | _ -> false

let rec private parseSeq (ps: Parser) (inGroup: bool) : Pattern =
    let terms = ResizeArray<Term>()
    let expectedAtom () = ps.Fail(ps.Pos, "expected 'S', 'F' or '['" + ps.Found)
    ps.SkipSpaces()
    if not (startsAtom ps.Peek) then expectedAtom ()
    let mutable go = true
    while go do
        terms.Add(parseTerm ps)
        ps.SkipSpaces()
        match ps.Peek with
        | Some ',' ->
            ps.Advance()
            ps.SkipSpaces()
            if not (startsAtom ps.Peek) then ps.Fail(ps.Pos, "expected 'S', 'F' or '[' after ','" + ps.Found)
        | c when startsAtom c -> ()
        | Some ']' when inGroup -> go <- false
        | None when not inGroup -> go <- false
        | None -> go <- false // the caller reports the unclosed '['
        | Some ']' -> ps.Fail(ps.Pos, "unexpected ']' without a matching '['")
        | Some c ->
            let more = if inGroup then "',', 'x', 'S', 'F', '[' or ']'" else "',', 'x', 'S', 'F' or '['"
            ps.Fail(ps.Pos, sprintf "expected %s, found '%c'" more c)
    { Terms = List.ofSeq terms }

and private parseTerm (ps: Parser) : Term =
    let atom =
        match ps.Peek with
        | Some 'S' -> ps.Advance(); Block Sparse
        | Some 'F' -> ps.Advance(); Block Fusion
        | Some '[' ->
            let openAt = ps.Pos
            ps.Advance()
            let inner = parseSeq ps true
            ps.SkipSpaces()
            match ps.Peek with
            | Some ']' -> ps.Advance(); Group inner
            | _ -> ps.Fail(openAt, "'[' is never closed")
        | _ -> ps.Fail(ps.Pos, "expected 'S', 'F' or '['" + ps.Found)
    ps.SkipSpaces()
    match ps.Peek with
    | Some 'x' ->
        let xAt = ps.Pos
        ps.Advance()
        ps.SkipSpaces()
        let digitsAt = ps.Pos
        let sb = StringBuilder()
        while (match ps.Peek with Some c -> Char.IsAsciiDigit c | None -> false) do
            sb.Append(ps.Peek.Value) |> ignore
            ps.Advance()
        if sb.Length = 0 then ps.Fail(xAt, "expected a repeat count" + ps.Found)
        match ps.Peek with
        | Some('.' | 'e' | 'E') ->
            while (match ps.Peek with Some c -> Char.IsAsciiDigit c || "+-.eE".Contains c | None -> false) do
                sb.Append(ps.Peek.Value) |> ignore
                ps.Advance()
            ps.Fail(digitsAt, sprintf "repeat count must be an integer >= 1, found %s" (sb.ToString()))
        | _ -> ()
        let text = sb.ToString().TrimStart('0')
        if text = "" then ps.Fail(digitsAt, "repeat count must be an integer >= 1, found 0")
        if text.Length > 6 || int text > maxBlocks then
            ps.Fail(digitsAt, sprintf "repeat count %s is too large (a pattern has at most %d blocks)" (sb.ToString()) maxBlocks)
        { Atom = atom; Count = int text }
    | _ -> { Atom = atom; Count = 1 }

/// Parse a pattern. Errors name the column and what was expected.
let parse (input: string) : Result<Pattern, PatternError> =
    let input = if isNull input then "" else input
    let ps = Parser(input)
    try
        let p = parseSeq ps false
        if length p > int64 maxBlocks then
            Error { Input = input; Column = 1; Message = sprintf "pattern expands to more than %d blocks" maxBlocks }
        else Ok p
    with :? PatternException as e -> Error e.Error

/// Parse or raise PatternException.
let parseOrFail (input: string) : Pattern =
    match parse input with
    | Ok p -> p
    | Error e -> raise (PatternException e)

/// Build a pattern from block kinds, compressed for display: a repeated period becomes "[..]xN", runs "Sxn".
let ofKinds (kinds: BlockKind list) : Pattern =
    let runs (ks: BlockKind list) =
        ks
        |> List.fold (fun acc k ->
            match acc with
            | (k', n) :: rest when k' = k -> (k, n + 1) :: rest
            | _ -> (k, 1) :: acc) []
        |> List.rev
        |> List.map (fun (k, n) -> { Atom = Block k; Count = n })
    let arr = List.toArray kinds
    let n = arr.Length
    if n = 0 then invalidArg "kinds" "a pattern needs at least one block"
    let period =
        [ 1 .. n / 2 ]
        |> List.tryFind (fun p -> n % p = 0 && Array.forall id (Array.init n (fun i -> arr[i] = arr[i % p])))
    match period with
    | Some 1 -> { Terms = [ { Atom = Block arr[0]; Count = n } ] }
    | Some p ->
        let inner = runs (List.ofArray arr[0 .. p - 1])
        if List.length inner = 1 && inner.Head.Count * (n / p) = n then { Terms = [ { inner.Head with Count = n } ] }
        else { Terms = [ { Atom = Group { Terms = inner }; Count = n / p } ] }
    | None -> { Terms = runs kinds }

/// Named presets.
let presets : (string * string * string) list =
    [ "sfmoe", "[S,F]x6", "alternating sparse/fusion, the paper's Figure 2"
      "sfmoe-dg", "Fx5,S,Fx5,S", "MoE at blocks 5 and 11, the authors' released SF-MoE-DG code"
      "gmoe", "Fx8,[S,F]x2", "MoE at blocks 8 and 10, GMoE (ICLR 2023)"
      "vit", "Fx12", "dense ViT, no MoE" ]

/// Parse a pattern or a preset name.
let resolve (input: string) : Result<Pattern, PatternError> =
    match presets |> List.tryFind (fun (n, _, _) -> n = (if isNull input then "" else input.Trim())) with
    | Some(_, p, _) -> parse p
    | None -> parse input

/// Check that the pattern has exactly `depth` blocks.
let validateDepth (depth: int) (p: Pattern) : Result<Pattern, string> =
    let n = length p
    if n = int64 depth then Ok p
    else Error(sprintf "pattern \"%s\" has %d blocks but depth is %d" (print p) n depth)

/// A pattern of `depth` fusion blocks.
let dense (depth: int) = { Terms = [ { Atom = Block Fusion; Count = depth } ] }
