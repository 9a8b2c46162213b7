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
/// header describing it. PyTorch reads it with safetensors.torch.load_file. Written to a temporary file and renamed.
/// </summary>
public static class ModelFile
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
    public static void Save(string path, Train.Network net, ModelHeader header, IReadOnlyDictionary<string, string>? extra = null)
    {
        var tensors = net.Module.state_dict().Select(kv => Tuple.Create(kv.Key, kv.Value));
        try { SafeTensors.write(path, Metadata(header, extra), ListModule.OfSeq(tensors)); }
        catch (SafeTensors.SafeTensorsException e) { throw new SfMoeException(e.Data0, e); }
    }

    /// <summary>Reads a model file's header. The message of any error names the file and the key at fault.</summary>
    public static ModelHeader ReadHeader(string path, IReadOnlyDictionary<string, string> meta)
    {
        string Get(string k) => meta.TryGetValue(k, out var v) ? v : throw new SfMoeException($"{path}: not an SfMoe model file (header lacks \"{k}\")");
        int GetInt(string k) => int.TryParse(Get(k), out var i) ? i : throw new SfMoeException($"{path}: header key \"{k}\" is not an integer: {Get(k)}");
        T GetJson<T>(string k)
        {
            try { return JsonSerializer.Deserialize<T>(Get(k)) ?? throw new SfMoeException($"{path}: header key \"{k}\" is empty"); }
            catch (JsonException e) { throw new SfMoeException($"{path}: header key \"{k}\" is not valid JSON ({e.Message})"); }
        }
        if (Get("format") != Format) throw new SfMoeException($"{path}: unknown model format \"{Get("format")}\" (expected {Format})");
        return new ModelHeader(
            Get("backbone"), meta.TryGetValue("model_config", out var mc) ? mc : null, GetInt("num_classes"), GetInt("in_chans"),
            GetInt("img_size"), GetJson<string[]>("class_names"), meta.TryGetValue("dataset", out var ds) ? ds : null,
            GetInt("step"), Get("algorithm"), Get("hparams"), GetJson<float[]>("mean"), GetJson<float[]>("std"));
    }

    /// <summary>Loads a model file: the network (strict load by name) and its header.</summary>
    /// <exception cref="SfMoeException">Missing, truncated or foreign file; missing or mis-shaped keys.</exception>
    public static (Train.Network Net, ModelHeader Header) Load(string path, string device = "cpu")
    {
        if (!File.Exists(path)) throw new SfMoeException($"{path}: file not found");
        SafeTensors.Contents contents;
        try { contents = SafeTensors.read(path); }
        catch (SafeTensors.SafeTensorsException e) { throw new SfMoeException(e.Data0, e); }
        using var _ = contents;
        var header = ReadHeader(path, contents.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value));
        var net = Networks.Create(header.Backbone, header.ModelConfigJson, header.NumClasses, header.InChannels, header.ImageSize, device, 0, dropout: 0.0);
        try { Weights.load(true, net.Module, contents.Tensors); }
        catch (Weights.WeightsException e) { net.Module.Dispose(); throw new SfMoeException($"{path}: {e.Data0}", e); }
        return (net, header);
    }
}

/// <summary>Builds networks by backbone name.</summary>
public static class Networks
{
    /// <summary>CNN baselines next to the ViT registry.</summary>
    public static readonly IReadOnlyList<string> CnnBackbones = new[] { "resnet50", "mnist_cnn" };

    /// <summary>
    /// A network: <paramref name="backbone"/> "vit" with a ViT config (JSON), or "resnet50" / "mnist_cnn". Weights
    /// are a function of <paramref name="seed"/>.
    /// </summary>
    public static Train.Network Create(string backbone, string? vitConfigJson, int numClasses, int inChannels, int imageSize, string device, long seed, double dropout)
    {
        var dd = Tensors.DdModule.parse(device);
        if (dd.IsError) throw new SfMoeException(dd.ErrorValue);
        switch (backbone)
        {
            case "vit":
                var cfg = ParseConfig(vitConfigJson ?? throw new SfMoeException("a ViT model needs its config"));
                return Train.Network.NewVitNet(new Vit.SfMoeVit(cfg, dd.ResultValue, FSharpOption<long>.Some(seed)));
            case "resnet50":
                torch.manual_seed(seed);
                return Train.resnet(dd.ResultValue, inChannels, numClasses, dropout);
            case "mnist_cnn":
                torch.manual_seed(seed);
                return Train.mnist(dd.ResultValue, inChannels, numClasses);
            default:
                throw new SfMoeException($"unknown backbone {backbone}: expected vit, resnet50 or mnist_cnn");
        }
    }

    internal static Config.VitConfig ParseConfig(string json)
    {
        try
        {
            return ConfigJson.parse(FuncConvert.FromFunc<string, FSharpResult<Config.VitConfig, string>>(Registry.tryCreate), json);
        }
        catch (ConfigJson.ConfigException e) { throw new SfMoeException(e.Data0, e); }
    }
}
