using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using SfMoe.Data;
using SfMoe.Imaging;
using static SfMoe.Host.Tests.Data.ImageFixtures;

namespace SfMoe.Host.Tests.Data;

/// <summary>
/// Wide coverage against PIL through hashes: 484 resize sizes, 7 resizes of the photo, and every one of the 2^24 RGB colours
/// through hue, brightness, contrast, saturation and grayscale. A hash only says pass or fail; the per-case tests locate errors.
/// </summary>
public class TransformSweepTests
{
    static string F(double v) => v.ToString("G", CultureInfo.InvariantCulture);
    static string Meta(string key) => Pipeline.Metadata[key];

    static readonly Lazy<ImageU8> AllColors = new(() =>
    {
        var px = new byte[3 << 24];
        for (int i = 0; i < 1 << 24; i++) { px[3 * i] = (byte)(i >> 16); px[3 * i + 1] = (byte)(i >> 8); px[3 * i + 2] = (byte)i; }
        return new ImageU8(4096, 4096, 3, px);
    });

    static string HashOfAll(IEnumerable<ImageU8> images)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var img in images) sha.AppendData(img.Pixels);
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }

    [Fact]
    public void ResizeOfManySizesMatchesPil()
    {
        var small = Resized.Image("input.small");
        var sizes = JsonSerializer.Deserialize<int[][]>(Meta("sweep.sizes"))!;
        Assert.Equal(484, sizes.Length);
        Assert.Equal(Meta("sha256.sweep.resize.small"), HashOfAll(sizes.Select(s => Transforms.Resize(small, s[0], s[1]))));
        var big = JsonSerializer.Deserialize<int[][]>(Meta("sweep.big_sizes"))!;
        Assert.Equal(Meta("sha256.sweep.resize.big"), HashOfAll(big.Select(s => Transforms.Resize(Photo, s[0], s[1]))));
    }

    public static TheoryData<string, double> ColorSweeps()
    {
        var data = new TheoryData<string, double>();
        foreach (var h in JsonSerializer.Deserialize<double[]>(Meta("sweep.hues"))!) data.Add("hue", h);
        foreach (var op in new[] { "brightness", "contrast", "saturation" })
            foreach (var f in JsonSerializer.Deserialize<double[]>(Meta("sweep.factors"))!) data.Add(op, f);
        data.Add("grayscale", 0);
        return data;
    }

    [Theory]
    [MemberData(nameof(ColorSweeps))]
    public void EveryColourMatchesPil(string op, double factor)
    {
        var all = AllColors.Value;
        var (result, key) = op switch
        {
            "hue" => (Transforms.AdjustHue(all, factor), $"sha256.sweep.hue.{F(factor)}"),
            "brightness" => (Transforms.AdjustBrightness(all, factor), $"sha256.sweep.brightness.{F(factor)}"),
            "contrast" => (Transforms.AdjustContrast(all, factor), $"sha256.sweep.contrast.{F(factor)}"),
            "saturation" => (Transforms.AdjustSaturation(all, factor), $"sha256.sweep.saturation.{F(factor)}"),
            _ => (Transforms.ToGrayscale(all), "sha256.sweep.grayscale"),
        };
        Assert.Equal(Meta(key), Sha256(result.Pixels));
    }
}
