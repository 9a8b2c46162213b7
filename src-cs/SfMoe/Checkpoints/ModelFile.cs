using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using SfMoe.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace SfMoe.Checkpoints;

/// <summary>
/// What a model file says about itself (the safetensors header metadata): enough for <c>predict</c> and
/// <c>evaluate</c> to rebuild the network without anything else.
/// </summary>
public sealed record ModelHeader(
    string Backbone,                 // "vit", "resnet50" or "mnist_cnn"
    string? ModelConfigJson,         // the ViT config (snake_case JSON) for "vit"
    int NumClasses,
    int InChannels,
    int ImageSize,
    IReadOnlyList<string> ClassNames,
    string? Dataset,
    int Step,
    string Algorithm,
    string HparamsJson,
    float[] Mean,
    float[] Std);

/// <summary>
/// A model checkpoint: one .safetensors file holding the network's state dict (timm names for ViTs) and a
/// header describing it. PyTorch reads it with safetensors.torch.load_file. Written through the host's atomic writer.
/// </summary>
internal static class ModelFile
{
    /// <summary>Format marker stored in the header.</summary>
    public const string Format = "sfmoe-model-1";

    internal static FSharpMap<string, string> Metadata(ModelHeader h, IReadOnlyDictionary<string, string>? extra = null)
    {
        var m = new Dictionary<string, string>
        {
            ["format"] = Format,
            ["backbone"] = h.Backbone,
            ["num_classes"] = h.NumClasses.ToString(),
            ["in_chans"] = h.InChannels.ToString(),
            ["img_size"] = h.ImageSize.ToString(),
            ["class_names"] = JsonSerializer.Serialize(h.ClassNames),
            ["step"] = h.Step.ToString(),
            ["algorithm"] = h.Algorithm,
            ["hparams"] = h.HparamsJson,
            ["mean"] = JsonSerializer.Serialize(h.Mean),
            ["std"] = JsonSerializer.Serialize(h.Std),
        };
        if (h.ModelConfigJson is not null) m["model_config"] = h.ModelConfigJson;
        if (h.Dataset is not null) m["dataset"] = h.Dataset;
        if (extra is not null) foreach (var (k, v) in extra) m.TryAdd(k, v);
        return MapModule.OfSeq(m.Select(kv => Tuple.Create(kv.Key, kv.Value)));
    }

    /// <summary>Writes the network's weights and header atomically; <paramref name="extra"/> adds header keys (never
    /// replacing the standard ones), e.g. where imported weights came from.</summary>
    internal static void Save(string path, Networks.Network net, ModelHeader header, IReadOnlyDictionary<string, string>? extra = null)
    {
        var tensors = net.Module.state_dict().Select(kv => Tuple.Create(kv.Key, kv.Value));
        TensorFiles.WriteSafeTensors(path, Metadata(header, extra), tensors);
    }

    /// <summary>Reads a model file's header. The message of any error names the file and the key at fault.</summary>
    public static ModelHeader ReadHeader(string path, IReadOnlyDictionary<string, string> meta)
    {
        string Get(string k) => meta.TryGetValue(k, out var v) ? v : throw new CheckpointException($"{path}: not an SfMoe model file (header lacks \"{k}\")");
        int GetInt(string k) => int.TryParse(Get(k), out var i) ? i : throw new CheckpointException($"{path}: header key \"{k}\" is not an integer: {Get(k)}");
        T GetJson<T>(string k)
        {
            try { return JsonSerializer.Deserialize<T>(Get(k)) ?? throw new CheckpointException($"{path}: header key \"{k}\" is empty"); }
            catch (JsonException e) { throw new CheckpointException($"{path}: header key \"{k}\" is not valid JSON ({e.Message})"); }
        }
        if (Get("format") != Format) throw new CheckpointException($"{path}: unknown model format \"{Get("format")}\" (expected {Format})");
        return new ModelHeader(
            Get("backbone"), meta.TryGetValue("model_config", out var mc) ? mc : null, GetInt("num_classes"), GetInt("in_chans"),
            GetInt("img_size"), GetJson<string[]>("class_names"), meta.TryGetValue("dataset", out var ds) ? ds : null,
            GetInt("step"), Get("algorithm"), Get("hparams"), GetJson<float[]>("mean"), GetJson<float[]>("std"));
    }

    /// <summary>Loads a model file: the network (strict load by name) and its header.</summary>
    /// <exception cref="SfMoeException">Missing, truncated or foreign file; missing or mis-shaped keys.</exception>
    internal static (Networks.Network Net, ModelHeader Header) Load(string path, string device = "cpu")
    {
        using var contents = TensorFiles.ReadSafeTensors(path);
        var header = ReadHeader(path, contents.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value));
        var net = Networks.build(Architecture(header), Tensors.DdModule.ofString(device), 0, 0.0);
        try { Weights.load(true, net.Module, contents.Tensors); }
        catch (CheckpointException e) { net.Module.Dispose(); throw new CheckpointException($"{path}: {e.Message}", e); }
        return (net, header);
    }

    /// <summary>The architecture a header describes.</summary>
    internal static Config.Architecture Architecture(ModelHeader h) =>
        ModelSpec.ofHeader(h.Backbone, h.ModelConfigJson is null ? null : FSharpOption<string>.Some(h.ModelConfigJson), h.NumClasses, h.InChannels, h.ImageSize);
}

