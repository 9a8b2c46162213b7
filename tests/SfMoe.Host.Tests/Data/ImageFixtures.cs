using System.Security.Cryptography;
using System.Text.Json;
using SfMoe.Data;
using SfMoe.Imaging;

namespace SfMoe.Host.Tests.Data;

/// <summary>Reads the fixtures of tests/fixtures/gen_image_fixtures.py (safetensors files with U8 and F32 tensors).</summary>
public sealed class TensorFile
{
    readonly byte[] _data;
    readonly Dictionary<string, (string Dtype, int[] Shape, int Begin, int End)> _entries = new();

    /// <summary>The __metadata__ strings.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public TensorFile(string path)
    {
        var raw = File.ReadAllBytes(path);
        long n = BitConverter.ToInt64(raw, 0);
        using var doc = JsonDocument.Parse(raw.AsMemory(8, (int)n));
        var meta = new Dictionary<string, string>();
        foreach (var p in doc.RootElement.EnumerateObject())
        {
            if (p.Name == "__metadata__")
            {
                foreach (var m in p.Value.EnumerateObject()) meta[m.Name] = m.Value.GetString()!;
                continue;
            }
            var offsets = p.Value.GetProperty("data_offsets");
            _entries[p.Name] = (p.Value.GetProperty("dtype").GetString()!,
                p.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                offsets[0].GetInt32(), offsets[1].GetInt32());
        }
        Metadata = meta;
        _data = raw.AsSpan(8 + (int)n).ToArray();
    }

    public IEnumerable<string> Names => _entries.Keys;

    /// <summary>A U8 tensor of shape [H, W, C] as an image.</summary>
    public ImageU8 Image(string name)
    {
        var (dtype, shape, b, e) = Entry(name);
        Assert.Equal("U8", dtype);
        Assert.Equal(3, shape.Length);
        return new ImageU8(shape[0], shape[1], shape[2], _data[b..e]);
    }

    /// <summary>Raw U8 data and shape.</summary>
    public (byte[] Data, int[] Shape) Bytes(string name)
    {
        var (dtype, shape, b, e) = Entry(name);
        Assert.Equal("U8", dtype);
        return (_data[b..e], shape);
    }

    /// <summary>An F32 tensor, flattened.</summary>
    public float[] Floats(string name)
    {
        var (dtype, _, b, e) = Entry(name);
        Assert.Equal("F32", dtype);
        var f = new float[(e - b) / 4];
        Buffer.BlockCopy(_data, b, f, 0, e - b);
        return f;
    }

    (string, int[], int, int) Entry(string name) =>
        _entries.TryGetValue(name, out var v) ? v : throw new KeyNotFoundException($"fixture tensor {name} not found");
}

public static class ImageFixtures
{
    static readonly Lazy<string> Root = new(() =>
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "SfMoe.sln"))) return Path.Combine(d.FullName, "tests", "fixtures", "images");
        throw new InvalidOperationException("cannot find SfMoe.sln above the test binary");
    });

    static readonly Lazy<TensorFile> DecodeFile = new(() => new TensorFile(PathOf("expected_decode.safetensors")));
    static readonly Lazy<TensorFile> ResizeFile = new(() => new TensorFile(PathOf("expected_resize.safetensors")));
    static readonly Lazy<TensorFile> ColorFile = new(() => new TensorFile(PathOf("expected_color.safetensors")));
    static readonly Lazy<TensorFile> PipelineFile = new(() => new TensorFile(PathOf("expected_pipeline.safetensors")));
    static readonly Lazy<ImageU8> PhotoImage = new(() => ImageCodec.Decode(PathOf("photo_500x375.jpg")));

    public static string PathOf(string name) => Path.Combine(Root.Value, name);
    public static TensorFile Decoded => DecodeFile.Value;
    public static TensorFile Resized => ResizeFile.Value;
    public static TensorFile Color => ColorFile.Value;
    public static TensorFile Pipeline => PipelineFile.Value;
    /// <summary>photo_500x375.jpg decoded by ImageCodec (its equality with PIL's decode is a test of its own).</summary>
    public static ImageU8 Photo => PhotoImage.Value;

    public static string Sha256(ReadOnlySpan<byte> bytes) => Convert.ToHexString(SHA256.HashData(bytes)).ToLowerInvariant();

    public static string Sha256(float[] values)
    {
        var b = new byte[values.Length * 4];
        Buffer.BlockCopy(values, 0, b, 0, b.Length);
        return Sha256(b);
    }

    /// <summary>Asserts two images are identical, with a message locating the differences.</summary>
    public static void Equal(ImageU8 expected, ImageU8 actual, string what)
    {
        Assert.True(expected.Height == actual.Height && expected.Width == actual.Width && expected.Channels == actual.Channels,
            $"{what}: shape {actual.Height}x{actual.Width}x{actual.Channels}, expected {expected.Height}x{expected.Width}x{expected.Channels}");
        int diffs = 0, maxDiff = 0, first = -1;
        for (int i = 0; i < expected.Pixels.Length; i++)
        {
            int d = Math.Abs(expected.Pixels[i] - actual.Pixels[i]);
            if (d == 0) continue;
            diffs++;
            maxDiff = Math.Max(maxDiff, d);
            if (first < 0) first = i;
        }
        if (diffs > 0)
        {
            int c = expected.Channels, pix = first / c;
            Assert.Fail($"{what}: {diffs} of {expected.Pixels.Length} values differ (max |diff| {maxDiff}); first at (y {pix / expected.Width}, x {pix % expected.Width}, c {first % c}): " +
                        $"{actual.Pixels[first]}, expected {expected.Pixels[first]}");
        }
    }

    /// <summary>Asserts two float arrays are bit-identical, with a message locating the first difference.</summary>
    public static void Equal(float[] expected, float[] actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        int diffs = 0, first = -1;
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i])) { diffs++; if (first < 0) first = i; }
        if (diffs > 0)
            Assert.Fail($"{what}: {diffs} of {expected.Length} floats differ; first at {first}: {actual[first]:R}, expected {expected[first]:R}");
    }
}
