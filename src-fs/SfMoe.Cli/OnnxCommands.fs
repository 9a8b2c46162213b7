/// ONNX commands: `sfmoe export --format onnx` (the flags map onto OnnxExportOptions).
module SfMoe.Cli.OnnxCommands

open System
open SfMoe.Checkpoints
open SfMoe.Cli.Output

/// `sfmoe export --format onnx`.
let export (checkpoint: string) (output: string) (batch: string option) (opset: int option) (randomAsThreshold: bool) (routingOutputs: bool) =
    let o = OnnxExportOptions(RandomPolicyAsThreshold = randomAsThreshold, RoutingOutputs = routingOutputs)
    opset |> Option.iter (fun v -> o.Opset <- v)
    o.BatchSize <-
        match batch with
        | None -> Nullable()
        | Some b when String.Equals(b, "dynamic", StringComparison.OrdinalIgnoreCase) -> Nullable()
        | Some b ->
            match Int32.TryParse b with
            | true, n when n >= 1 -> Nullable n
            | _ -> fail "--batch must be dynamic or a batch size >= 1, got %s" b
    let r = OnnxExporter.Export(checkpoint, output, o)
    let batchText = if r.BatchSize.HasValue then string r.BatchSize.Value else "dynamic"
    Console.WriteLine(sprintf "wrote %s (onnx, opset %d, batch %s, %.1f MB)" output r.Opset batchText (float r.Bytes / 1e6))
    if r.Stochastic then
        Console.WriteLine "note: the random second-expert policy is exported as drawn (RandomUniformLike): outputs vary from run to run; --random-as-threshold serves it deterministically"
    0
