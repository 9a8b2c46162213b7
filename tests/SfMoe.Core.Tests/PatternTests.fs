module SfMoe.Core.Tests.PatternTests

open Expecto
open FsCheck
open FsCheck.FSharp
open SfMoe.Core.Pattern

let private kinds (s: string) =
    s |> Seq.filter (fun c -> c = 'S' || c = 'F') |> Seq.map (function 'S' -> Sparse | _ -> Fusion) |> List.ofSeq

let private expandOk (s: string) =
    match parse s with
    | Ok p -> expand p
    | Error e -> failtestf "%s" (string e)

let private errorOf (s: string) =
    match parse s with
    | Ok p -> failtestf "pattern %s parsed to %s but should fail" s (print p)
    | Error e -> e

/// Random pattern trees: depth <= 3, 1-4 terms, counts 1-4.
let rec private genPattern (depth: int) : Gen<Pattern> =
    let genAtom =
        if depth <= 0 then Gen.elements [ Block Sparse; Block Fusion ]
        else
            Gen.frequency [ 3, Gen.elements [ Block Sparse; Block Fusion ]
                            1, genPattern (depth - 1) |> Gen.map Group ]
    let genTerm =
        gen {
            let! a = genAtom
            let! n = Gen.choose (1, 4)
            return { Atom = a; Count = n }
        }
    gen {
        let! n = Gen.choose (1, 4)
        let! ts = Gen.listOfLength n genTerm
        return { Terms = ts }
    }

type Arbs =
    static member Pattern() = Arb.fromGen (genPattern 3)
    static member Kinds() =
        Arb.fromGen (
            gen {
                let! n = Gen.choose (1, 30)
                return! Gen.listOfLength n (Gen.elements [ Sparse; Fusion ])
            })

let private config = { FsCheckConfig.defaultConfig with arbitrary = [ typeof<Arbs> ]; maxTest = 300 }

[<Tests>]
let tests =
    testList "pattern" [
        test "[S,F]x6 expands to 12 blocks alternating S and F" {
            Expect.equal (expandOk "[S,F]x6") (List.replicate 6 [ Sparse; Fusion ] |> List.concat) "alternating"
        }
        test "Fx5,S,Fx5,S puts MoE at blocks 5 and 11" {
            let ks = expandOk "Fx5,S,Fx5,S"
            Expect.equal ks.Length 12 "length"
            Expect.equal [ for i, k in List.indexed ks do if k = Sparse then yield i ] [ 5; 11 ] "sparse blocks"
        }
        test "Fx8,[S,F]x2 puts MoE at blocks 8 and 10" {
            let ks = expandOk "Fx8,[S,F]x2"
            Expect.equal [ for i, k in List.indexed ks do if k = Sparse then yield i ] [ 8; 10 ] "sparse blocks"
        }
        test "juxtaposition, nesting and spaces" {
            Expect.equal (expandOk "SFSF") (kinds "SFSF") "SFSF"
            Expect.equal (expandOk " [ S , F ] x 2 , F ") (kinds "SFSFF") "spaces"
            Expect.equal (expandOk "[[S,F]x2,F]x2") (kinds "SFSFFSFSFF") "nesting"
            Expect.equal (expandOk "[SF]x2F") (kinds "SFSFF") "juxtaposed group"
        }
        test "canonical printing" {
            let canon s = parse s |> Result.map print
            Expect.equal (canon "SFSF") (Ok "S,F,S,F") "commas inserted"
            Expect.equal (canon " [ S , F ] x 6 ") (Ok "[S,F]x6") "spaces removed"
            Expect.equal (canon "Sx1,F") (Ok "S,F") "x1 dropped"
            Expect.equal (canon "Fx05") (Ok "Fx5") "leading zero"
        }
        test "presets" {
            let r name = resolve name |> Result.map print
            Expect.equal (r "sfmoe") (Ok "[S,F]x6") "sfmoe"
            Expect.equal (r "sfmoe-dg") (Ok "Fx5,S,Fx5,S") "sfmoe-dg"
            Expect.equal (r "gmoe") (Ok "Fx8,[S,F]x2") "gmoe"
            Expect.equal (r "vit") (Ok "Fx12") "vit"
            Expect.equal (r "[S,F]x2") (Ok "[S,F]x2") "a pattern is not a preset"
        }
        test "depth validation names both lengths" {
            let p = parseOrFail "[S,F]x6"
            Expect.equal (validateDepth 12 p |> Result.map print) (Ok "[S,F]x6") "fits"
            Expect.equal (validateDepth 10 p) (Error "pattern \"[S,F]x6\" has 12 blocks but depth is 10") "too long"
        }
        testList "errors name the column and what was expected" [
            let cases =
                [ "[S,F]x", "pattern \"[S,F]x\" at column 6: expected a repeat count"
                  "", "pattern \"\" at column 1: expected 'S', 'F' or '['"
                  "   ", "pattern \"   \" at column 4: expected 'S', 'F' or '['"
                  "[S,F", "pattern \"[S,F\" at column 1: '[' is never closed"
                  "S]", "pattern \"S]\" at column 2: unexpected ']' without a matching '['"
                  "Sx0", "pattern \"Sx0\" at column 3: repeat count must be an integer >= 1, found 0"
                  "Sx1.5", "pattern \"Sx1.5\" at column 3: repeat count must be an integer >= 1, found 1.5"
                  "S,", "pattern \"S,\" at column 3: expected 'S', 'F' or '[' after ','"
                  "S,,F", "pattern \"S,,F\" at column 3: expected 'S', 'F' or '[' after ',', found ','"
                  "s", "pattern \"s\" at column 1: expected 'S', 'F' or '[', found 's'"
                  "[]", "pattern \"[]\" at column 2: expected 'S', 'F' or '[', found ']'"
                  "Sx-1", "pattern \"Sx-1\" at column 2: expected a repeat count, found '-'"
                  "SxF", "pattern \"SxF\" at column 2: expected a repeat count, found 'F'"
                  "S F y", "pattern \"S F y\" at column 5: expected ',', 'x', 'S', 'F' or '[', found 'y'"
                  "[S;F]", "pattern \"[S;F]\" at column 3: expected ',', 'x', 'S', 'F', '[' or ']', found ';'"
                  "Sx12345678", "pattern \"Sx12345678\" at column 3: repeat count 12345678 is too large (a pattern has at most 10000 blocks)"
                  "[[Sx1000]x1000]x1000", "pattern \"[[Sx1000]x1000]x1000\" at column 1: pattern expands to more than 10000 blocks" ]
            for input, msg in cases ->
                test (sprintf "%A" input) { Expect.equal (string (errorOf input)) msg "message" }
        ]
        testPropertyWithConfig config "parse (print p) = p" (fun (p: Pattern) ->
            parse (print p) = Ok p)
        testPropertyWithConfig config "print is canonical: print (parse (print p)) = print p" (fun (p: Pattern) ->
            (parse (print p) |> Result.map print) = Ok(print p))
        testPropertyWithConfig config "expand (ofKinds ks) = ks" (fun (ks: BlockKind list) ->
            expand (ofKinds ks) = ks)
        testPropertyWithConfig config "ofKinds round-trips through text" (fun (ks: BlockKind list) ->
            (parse (print (ofKinds ks)) |> Result.map expand) = Ok ks)
        testPropertyWithConfig config "a repeated group expands to n copies" (fun (p: Pattern) (n: PositiveInt) ->
            let n = 1 + n.Get % 5
            let r = { Terms = [ { Atom = Group p; Count = n } ] }
            // `length` saturates above maxBlocks (documented), so compare with the saturated product.
            expand r = (List.replicate n (expand p) |> List.concat) && length r = min (int64 maxBlocks + 1L) (int64 n * length p))
        test "ofKinds compresses periods and runs" {
            Expect.equal (print (ofKinds (expandOk "[S,F]x6"))) "[S,F]x6" "period 2"
            Expect.equal (print (ofKinds (expandOk "Fx12"))) "Fx12" "run"
            Expect.equal (print (ofKinds (expandOk "Fx8,S,F,S,F"))) "Fx8,S,F,S,F" "no period"
            Expect.equal (print (ofKinds (expandOk "Fx5,S,Fx5,S"))) "[Fx5,S]x2" "period 6"
        }
    ]
