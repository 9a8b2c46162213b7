using SfMoe.Data;
using SfMoe.Imaging;
using Xunit.Abstractions;
using static SfMoe.Host.Tests.Data.ImageFixtures;

namespace SfMoe.Host.Tests.Data;

/// <summary>The random parts of the train transform: distributions, draw order, determinism, thread safety.</summary>
public class TrainTransformTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(375, 500, 1.0, 0.933, 1.333)]   // 4:3 landscape: h <= 375 needs ratio >= 0.7 * 500 / 375
    [InlineData(500, 500, 1.0, 0.75, 1.333)]
    [InlineData(53, 37, 0.94, 0.75, 1.0)]       // portrait thumbnail: w <= 37 and area >= 0.7 * 53 * 37 need ratio <= 1
    public void SampleCropStaysInsideTheScaleAndRatioRanges(int H, int W, double fracHi, double ratioLo, double ratioHi)
    {
        const int N = 20000;
        double minFrac = 1, maxFrac = 0, minRatio = 10, maxRatio = 0;
        for (int seed = 0; seed < N; seed++)
        {
            var (top, left, h, w) = Transforms.SampleCrop(H, W, new Random(seed));
            Assert.True(top >= 0 && left >= 0 && top + h <= H && left + w <= W && h > 0 && w > 0, $"crop outside: {top} {left} {h} {w}");
            // w and h are rounded from sqrt(area * ratio) and sqrt(area / ratio): allow half a pixel on each side.
            double lo = (w - 0.5) * (h - 0.5) / (H * W), hi = (w + 0.5) * (h + 0.5) / (H * W);
            Assert.True(hi >= 0.7 && lo <= 1.0, $"area fraction {w * h / (double)(H * W)} outside [0.7, 1]");
            Assert.True((w + 0.5) / (h - 0.5) >= 3.0 / 4 && (w - 0.5) / (h + 0.5) <= 4.0 / 3, $"aspect {w}/{h} outside [3/4, 4/3]");
            double frac = (double)w * h / (H * W), ratio = (double)w / h;
            minFrac = Math.Min(minFrac, frac); maxFrac = Math.Max(maxFrac, frac);
            minRatio = Math.Min(minRatio, ratio); maxRatio = Math.Max(maxRatio, ratio);
        }
        output.WriteLine($"{H}x{W}: area fraction [{minFrac:F4}, {maxFrac:F4}], aspect [{minRatio:F4}, {maxRatio:F4}]");
        // The extremes are reached (to within the rounding of w and h), and nothing goes beyond them.
        Assert.InRange(minFrac, 0.68, 0.71);
        Assert.InRange(maxFrac, fracHi - 0.02, 1.0);
        double tol = 2.0 / Math.Min(H, W);   // the rounding of w and h
        Assert.InRange(minRatio, ratioLo - tol, ratioLo + tol);
        Assert.InRange(maxRatio, ratioHi - tol, ratioHi + tol);
    }

    [Fact]
    public void SampleCropPositionsAreUniform()
    {
        // With scale fixed at 0.8 on a square image and ratio 1, h = w = round(sqrt(0.8) * 100) = 89: top in 0..11.
        var counts = new int[12];
        for (int seed = 0; seed < 12000; seed++)
        {
            var b = Transforms.SampleCrop(100, 100, new Random(seed), 0.8, 0.8, 1, 1);
            Assert.Equal((89, 89), (b.Height, b.Width));
            counts[b.Top]++;
        }
        Assert.All(counts, c => Assert.InRange(c, 850, 1150));
    }

    [Fact]
    public void SampleCropFallsBackToACentreCropWithTheRatioClamped()
    {
        // No attempt fits in a 10 x 1000 strip: the fallback crops the centre at ratio 4/3 (h = 10, w = round(13.33) = 13).
        Assert.Equal(new CropBox(0, 493, 10, 13), Transforms.SampleCrop(10, 1000, new Random(1)));
        // A tall strip: w = 10, h = round(10 / 0.75) = 13.
        Assert.Equal(new CropBox(493, 0, 13, 10), Transforms.SampleCrop(1000, 10, new Random(1)));
        // Python's round is half-to-even, as Math.Round's default: 2 / 0.8 = 2.5 rounds to 2.
        Assert.Equal(new CropBox(0, 0, 2, 2), Transforms.SampleCrop(2, 2, new Random(1), 1.0, 1.0, 0.8, 0.8));
    }

    [Fact]
    public void FlipGrayscaleAndJitterHaveTheirRates()
    {
        const int N = 8000;
        int flips = 0, grays = 0;
        var firstOp = new int[4];
        var perms = new HashSet<string>();
        double sumB = 0, sumH = 0;
        for (int seed = 0; seed < N; seed++)
        {
            var p = Transforms.SampleTrain(375, 500, new Random(seed));
            flips += p.Flip ? 1 : 0;
            grays += p.Grayscale ? 1 : 0;
            var j = p.Jitter;
            Assert.Equal(new[] { 0, 1, 2, 3 }, j.Order.Order());
            perms.Add(string.Join("", j.Order));
            firstOp[j.Order[0]]++;
            Assert.InRange(j.Brightness!.Value, 0.7, 1.3);
            Assert.InRange(j.Contrast!.Value, 0.7, 1.3);
            Assert.InRange(j.Saturation!.Value, 0.7, 1.3);
            Assert.InRange(j.Hue!.Value, -0.3, 0.3);
            sumB += j.Brightness.Value; sumH += j.Hue.Value;
        }
        double sd(double p) => Math.Sqrt(p * (1 - p) / N);
        Assert.InRange(flips / (double)N, 0.5 - 4 * sd(0.5), 0.5 + 4 * sd(0.5));
        Assert.InRange(grays / (double)N, 0.1 - 4 * sd(0.1), 0.1 + 4 * sd(0.1));
        Assert.Equal(24, perms.Count);
        Assert.All(firstOp, c => Assert.InRange(c / (double)N, 0.25 - 4 * sd(0.25), 0.25 + 4 * sd(0.25)));
        Assert.InRange(sumB / N, 0.99, 1.01);
        Assert.InRange(sumH / N, -0.01, 0.01);
    }

    [Fact]
    public void DrawOrderIsCropFlipJitterGray()
    {
        for (int seed = 0; seed < 50; seed++)
        {
            var p = Transforms.SampleTrain(375, 500, new Random(seed));
            var rng = new Random(seed);
            var crop = Transforms.SampleCrop(375, 500, rng);
            bool flip = rng.NextDouble() < 0.5;
            var jitter = Transforms.SampleColorJitter(rng);
            bool gray = rng.NextDouble() < 0.1;
            Assert.Equal(crop, p.Crop);
            Assert.Equal(flip, p.Flip);
            Assert.Equal(jitter.Order, p.Jitter.Order);
            Assert.Equal((jitter.Brightness, jitter.Contrast, jitter.Saturation, jitter.Hue), (p.Jitter.Brightness, p.Jitter.Contrast, p.Jitter.Saturation, p.Jitter.Hue));
            Assert.Equal(gray, p.Grayscale);
        }
    }

    [Fact]
    public void OutputsAreFiniteAndNormalised()
    {
        float[] lo = new float[3], hi = new float[3];
        for (int c = 0; c < 3; c++)
        {
            lo[c] = (0 - Transforms.ImageNetMean[c]) / Transforms.ImageNetStd[c];
            hi[c] = (1 - Transforms.ImageNetMean[c]) / Transforms.ImageNetStd[c];
        }
        int grayOutputs = 0;
        for (int seed = 0; seed < 40; seed++)
        {
            var p = Transforms.SampleTrain(Photo.Height, Photo.Width, new Random(seed));
            var x = Transforms.TrainTransform(Photo, 224, 224, new Random(seed));
            Assert.Equal(3 * 224 * 224, x.Length);
            for (int c = 0; c < 3; c++)
                for (int i = c * 224 * 224; i < (c + 1) * 224 * 224; i++)
                    Assert.True(float.IsFinite(x[i]) && x[i] >= lo[c] - 1e-6f && x[i] <= hi[c] + 1e-6f, $"value {x[i]} at {i}");
            if (p.Grayscale)
            {
                grayOutputs++;
                var img = Transforms.ApplyTrain(Photo, p, 224, 224);
                for (int i = 0; i < img.Pixels.Length; i += 3)
                    Assert.True(img.Pixels[i] == img.Pixels[i + 1] && img.Pixels[i] == img.Pixels[i + 2]);
            }
        }
        Assert.True(grayOutputs > 0, "no grayscale draw among the seeds");
    }

    [Fact]
    public void SameSeedGivesTheSameOutputAndOtherSeedsDiffer()
    {
        var a = Transforms.TrainTransform(Photo, 224, 224, new Random(7));
        var b = Transforms.TrainTransform(Photo, 224, 224, new Random(7));
        Assert.Equal(a, b);
        var hashes = Enumerable.Range(0, 10).Select(s => Sha256(Transforms.TrainTransform(Photo, 224, 224, new Random(s)))).ToHashSet();
        Assert.Equal(10, hashes.Count);
    }

    [Fact]
    public void IsThreadSafe()
    {
        var sequential = Enumerable.Range(0, 16).Select(s => Sha256(Transforms.TrainTransform(Photo, 96, 96, new Random(s)))).ToArray();
        var parallel = new string[16];
        Parallel.For(0, 16, new ParallelOptions { MaxDegreeOfParallelism = 4 },
            s => parallel[s] = Sha256(Transforms.TrainTransform(Photo, 96, 96, new Random(s))));
        Assert.Equal(sequential, parallel);
    }

    [Fact]
    public void JitterStrengthZeroSkipsTheAdjustment()
    {
        var p = Transforms.SampleColorJitter(new Random(3), brightness: 0, contrast: 0.3, saturation: 0, hue: 0);
        Assert.Null(p.Brightness);
        Assert.Null(p.Saturation);
        Assert.Null(p.Hue);
        Assert.InRange(p.Contrast!.Value, 0.7, 1.3);
        // Skipping hue is not the same as a zero shift: PIL's HSV round trip changes some pixels.
        var img = Color.Image("input.colors");
        Assert.NotEqual(img.Pixels, Transforms.AdjustHue(img, 0).Pixels);
        Assert.Equal(img.Pixels, Transforms.ColorJitter(img, new ColorJitterParams([0, 1, 2, 3], null, null, null, null)).Pixels);
    }

    [Fact]
    public void RejectsBadArguments()
    {
        var img = Color.Image("input.small");
        Assert.Throws<ArgumentOutOfRangeException>(() => Transforms.AdjustHue(img, 0.51));
        Assert.Throws<ArgumentException>(() => Transforms.ResizedCrop(img, new CropBox(0, 0, 54, 37), 10, 10));
        Assert.Throws<ArgumentException>(() => Transforms.Resize(img, 0, 10));
        Assert.Throws<ArgumentException>(() => Transforms.AdjustBrightness(new ImageU8(2, 2, 4, new byte[16]), 1.1));
        Assert.Throws<ArgumentException>(() => Transforms.ToCHW(img, [0.5f], [0.5f]));
        Assert.Throws<ArgumentException>(() => Transforms.ColorJitter(img, new ColorJitterParams([0, 1, 1, 3], 1, 1, 1, 0)));
    }

    [Fact]
    public void Speed()
    {
        // Not a benchmark (the machine is shared): a loose bound so a gross slowdown fails, and the numbers in the log.
        var bytes = File.ReadAllBytes(PathOf("photo_500x375.jpg"));
        var img = ImageCodec.Decode(bytes, "photo");
        for (int i = 0; i < 5; i++) { _ = Transforms.EvalTransform(img, 224, 224); _ = Transforms.TrainTransform(img, 224, 224, new Random(i)); }
        const int N = 40;
        double Ms(Action a)
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            for (int i = 0; i < N; i++) a();
            return sw.Elapsed.TotalMilliseconds / N;
        }
        int seed = 0;
        double decode = Ms(() => ImageCodec.Decode(bytes, "photo"));
        double eval = Ms(() => Transforms.EvalTransform(img, 224, 224));
        double train = Ms(() => Transforms.TrainTransform(img, 224, 224, new Random(seed++)));
        output.WriteLine($"500x375 JPEG: decode {decode:F2} ms, eval transform {eval:F2} ms, train transform {train:F2} ms per image");
        Assert.True(decode + train < 100, $"decode {decode:F1} ms + train {train:F1} ms per image");
    }
}
