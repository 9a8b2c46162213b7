using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.FSharp.Collections;
using SfMoe.Checkpoints;
using SfMoe.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe.Runs;

/// <summary>The resumable state of a run: weights, optimizer, the run's generator, the next step and the results so far.</summary>
internal static class TrainState
{
    public static void Save(string path, Train.Learner learner, int nextStep, List<string> lines, JsonObject args)
    {
        using var scope = torch.NewDisposeScope();
        var tensors = new List<Tuple<string, Tensor>>();
        foreach (var (k, v) in learner.Network.Module.state_dict()) tensors.Add(Tuple.Create("model." + k, v));
        var (optState, optStep) = learner.Optimizer.State.ToValueTuple();
        foreach (var t in optState) tensors.Add(Tuple.Create("optimizer." + t.Item1, t.Item2));
        tensors.Add(Tuple.Create("rng", learner.Generator.get_state()));
        var meta = new Dictionary<string, string>
        {
            ["format"] = "sfmoe-train-state-1",
            ["next_step"] = nextStep.ToString(),
            ["optimizer_step"] = optStep.ToString(),
            ["results"] = JsonSerializer.Serialize(lines),
            ["args"] = args.ToJsonString(),
        };
        TensorFiles.WriteSafeTensors(path, meta, tensors);
    }

    /// <summary>The settings a state was saved with (its args metadata), from the file's header alone; null when the
    /// file cannot be read as a state (<see cref="Load"/> then says why).</summary>
    public static JsonObject? PeekSettings(string path)
    {
        try
        {
            using var f = File.OpenRead(path);
            var len = new byte[8];
            f.ReadExactly(len);
            ulong n = BitConverter.ToUInt64(len);
            if (n > (ulong)Math.Min(f.Length - 8, 1L << 30)) return null;
            var header = new byte[n];
            f.ReadExactly(header);
            var args = (JsonNode.Parse(header) as JsonObject)?["__metadata__"]?["args"];
            return args?.GetValueKind() == JsonValueKind.String ? JsonNode.Parse(args.GetValue<string>()) as JsonObject : null;
        }
        catch (Exception e) when (e is IOException or JsonException or UnauthorizedAccessException or InvalidOperationException) { return null; }
    }

    public static (int NextStep, List<string> Lines, JsonObject Args) Load(string path, Train.Learner learner)
    {
        SafeTensors.Contents c;
        try { c = TensorFiles.ReadSafeTensors(path); }
        catch (CheckpointException e) { throw new RunException($"cannot resume: {e.Message}", e); }
        using var _ = c;
        var meta = c.Metadata;
        if (!meta.TryGetValue("format", out var fmt) || fmt != "sfmoe-train-state-1")
            throw new RunException($"cannot resume: {path} is not an SfMoe training state");
        var model = c.Tensors.Where(t => t.Item1.StartsWith("model.")).Select(t => Tuple.Create(t.Item1["model.".Length..], t.Item2));
        try { Weights.load(true, learner.Network.Module, ListModule.OfSeq(model)); }
        catch (CheckpointException e) { throw new RunException($"cannot resume from {path}: the model differs ({e.Message})", e); }
        var opt = c.Tensors.Where(t => t.Item1.StartsWith("optimizer.")).Select(t => Tuple.Create(t.Item1["optimizer.".Length..], t.Item2));
        try { learner.Optimizer.LoadState(ListModule.OfSeq(opt), long.Parse(meta["optimizer_step"])); }
        catch (CheckpointException e) { throw new RunException($"cannot resume from {path}: {e.Message}", e); }
        var rng = c.Find("rng") ?? throw new RunException($"cannot resume: {path} lacks the generator state");
        learner.Generator.set_state(rng.Value);
        var lines = JsonSerializer.Deserialize<List<string>>(meta["results"]) ?? new List<string>();
        var args = JsonNode.Parse(meta["args"]) as JsonObject ?? new JsonObject();
        return (int.Parse(meta["next_step"]), lines, args);
    }
}
