using System.Globalization;
using System.Text.Json;
using SfMoe.Data;
using SfMoe.Imaging;
using static SfMoe.Host.Tests.Data.ImageFixtures;

namespace SfMoe.Host.Tests.Data;

/// <summary>Every transform against Pillow 9.4 / torchvision 0.14 outputs, bit for bit.</summary>
public class TransformExactTests
{
    static string F(double v) => v.ToString("G", CultureInfo.InvariantCulture);

    public static TheoryData<string, int, int> ResizeCases()
    {
        var data = new TheoryData<string, int, int>();
        foreach (var name in Resized.Names.Where(n => n.StartsWith("resize.")).Order())
        {
            var parts = name.Split('.');
            var hw = parts[2].Split('x');
            data.Add(parts[1], int.Parse(hw[0]), int.Parse(hw[1]));
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(ResizeCases))]
    public void ResizeMatchesPilBilinear(string source, int height, int width)
    {
        var input = source switch
        {
            "small" => Resized.Image("input.small"),
            "gray" => Resized.Image("input.gray"),
            _ => Photo,
        };
        var actual = Transforms.Resize(input, height, width);
        Equal(Resized.Image($"resize.{source}.{height}x{width}"), actual, $"resize {source} to {height}x{width}");
    }

    [Fact]
    public void ResizeCasesCoverDownUpIdentityAndSinglePass()
    {
        var cases = ResizeCases().Cast<object[]>().Select(r => ((string)r[0], (int)r[1], (int)r[2])).ToList();
        Assert.Contains(("big", 224, 224), cases);     // the eval transform: down in both directions
        Assert.Contains(("small", 112, 96), cases);    // up in both
        Assert.Contains(("small", 53, 37), cases);     // identity
        Assert.Contains(("small", 53, 20), cases);     // horizontal pass only
        Assert.Contains(("small", 30, 37), cases);     // vertical pass only
        Assert.Contains(("small", 11, 80), cases);     // down one way, up the other
        Assert.Contains(("gray", 20, 31), cases);      // one channel
    }

    [Fact]
    public void EvalTransformMatchesPilAndTorchvisionBitForBit()
    {
        // uint8 after Resize((224, 224)), then the float32 tensor after ToTensor + Normalize (hash of torchvision's output).
        Equal(Resized.Image("resize.big.224x224"), Transforms.Resize(Photo, 224, 224), "Resize((224, 224))");
        var x = Transforms.EvalTransform(Photo, 224, 224);
        Assert.Equal(3 * 224 * 224, x.Length);
        Assert.Equal(Pipeline.Metadata["sha256.eval.big.224x224.chw"], Sha256(x));
        Equal(Pipeline.Floats("eval.small.20x31.chw"), Transforms.EvalTransform(Resized.Image("input.small"), 20, 31), "eval small");
    }

    [Fact]
    public void ToChwWithoutNormalisationIsPixelsOver255()
    {
        var small = Resized.Image("input.small");
        Equal(Pipeline.Floats("unit.small.chw"), Transforms.ToCHW(small), "ToTensor");
        var x = Transforms.ToCHW(small);
        Assert.Equal(small[5, 7, 2] / 255f, x[2 * 53 * 37 + 5 * 37 + 7]);
    }

    public static TheoryData<string, string, double> ColorCases()
    {
        var data = new TheoryData<string, string, double>();
        var factors = JsonSerializer.Deserialize<double[]>(Color.Metadata["factors"])!;
        var hues = JsonSerializer.Deserialize<double[]>(Color.Metadata["hues"])!;
        foreach (var src in new[] { "colors", "small" })
        {
            foreach (var op in new[] { "brightness", "contrast", "saturation" })
                foreach (var f in factors) data.Add(op, src, f);
            foreach (var h in hues) data.Add("hue", src, h);
        }
        foreach (var op in new[] { "brightness", "contrast", "saturation" })
            foreach (var f in new[] { 0.7, 1.3 }) data.Add(op, "gray", f);
        return data;
    }

    static ImageU8 Apply(string op, ImageU8 img, double f) => op switch
    {
        "brightness" => Transforms.AdjustBrightness(img, f),
        "contrast" => Transforms.AdjustContrast(img, f),
        "saturation" => Transforms.AdjustSaturation(img, f),
        "hue" => Transforms.AdjustHue(img, f),
        _ => throw new ArgumentException(op),
    };

    [Theory]
    [MemberData(nameof(ColorCases))]
    public void ColorAdjustmentMatchesPil(string op, string source, double factor)
    {
        var input = Color.Image("input." + source);
        var expected = op == "hue" ? Color.Image($"hue.{source}.{F(factor)}") : Color.Image($"{op}.{source}.{F(factor)}");
        Equal(expected, Apply(op, input, factor), $"{op} {factor} on {source}");
    }

    [Theory]
    [InlineData("colors")]
    [InlineData("small")]
    public void GrayscaleAndFlipMatchPil(string source)
    {
        var input = Color.Image("input." + source);
        Equal(Color.Image("grayscale." + source), Transforms.ToGrayscale(input), "grayscale");
        Equal(Color.Image("hflip." + source), Transforms.HorizontalFlip(input), "flip");
        var one = Transforms.ToGrayscale(input, 1);
        Assert.Equal(1, one.Channels);
        Assert.Equal(Transforms.ToGrayscale(input).Pixels.Where((_, i) => i % 3 == 0), one.Pixels);
    }

    [Fact]
    public void InputsAreNotModified()
    {
        var input = Color.Image("input.colors");
        var before = (byte[])input.Pixels.Clone();
        _ = Transforms.AdjustHue(input, 0.2);
        _ = Transforms.AdjustSaturation(input, 1.3);
        _ = Transforms.HorizontalFlip(input);
        _ = Transforms.Resize(input, 17, 90);
        Assert.Equal(before, input.Pixels);
    }

    public static TheoryData<int> CropCases()
    {
        var data = new TheoryData<int>();
        var n = JsonSerializer.Deserialize<int[][][]>(Pipeline.Metadata["crops"])!.Length;
        for (int k = 0; k < n; k++) data.Add(k);
        return data;
    }

    [Theory]
    [MemberData(nameof(CropCases))]
    public void ResizedCropMatchesTorchvision(int k)
    {
        var c = JsonSerializer.Deserialize<int[][][]>(Pipeline.Metadata["crops"])![k];
        var box = new CropBox(c[0][0], c[0][1], c[0][2], c[0][3]);
        Equal(Pipeline.Image($"crop.{k}"), Transforms.ResizedCrop(Photo, box, c[1][0], c[1][1]), $"crop {box}");
    }

    [Fact]
    public void ResizedCropEqualsCropThenResize()
    {
        var box = new CropBox(33, 17, 200, 301);
        Equal(Transforms.Resize(Transforms.Crop(Photo, box), 61, 47), Transforms.ResizedCrop(Photo, box, 61, 47), "no-copy crop");
    }

    sealed record TrainCase(int[] crop, bool flip, int[] order, double[] factors, bool gray);

    public static TheoryData<int> TrainCases()
    {
        var data = new TheoryData<int>();
        var n = JsonSerializer.Deserialize<TrainCase[]>(Pipeline.Metadata["train"])!.Length;
        for (int k = 0; k < n; k++) data.Add(k);
        return data;
    }

    [Theory]
    [MemberData(nameof(TrainCases))]
    public void TrainPipelineWithGivenDrawsMatchesTorchvision(int k)
    {
        var t = JsonSerializer.Deserialize<TrainCase[]>(Pipeline.Metadata["train"])![k];
        var p = new TrainParams(new CropBox(t.crop[0], t.crop[1], t.crop[2], t.crop[3]), t.flip,
            new ColorJitterParams(t.order, t.factors[0], t.factors[1], t.factors[2], t.factors[3]), t.gray);
        var img = Transforms.ApplyTrain(Photo, p, 64, 48);
        Equal(Pipeline.Image($"train.{k}"), img, $"train case {k}");
        Equal(Pipeline.Floats($"train.{k}.chw"), Transforms.ToCHW(img, Transforms.ImageNetMean, Transforms.ImageNetStd), $"train case {k} tensor");
    }
}
