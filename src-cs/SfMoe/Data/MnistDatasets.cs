using System.Buffers.Binary;
using System.IO.Compression;
using SfMoe.Imaging;
using TorchSharp;

namespace SfMoe.Data;

/// <summary>The 70,000 MNIST digits (60,000 training images, then 10,000 test images) read from the four raw idx files.</summary>
internal sealed class MnistData
{
    /// <summary>The idx files, in the order train images, train labels, test images, test labels (without ".gz").</summary>
    public static readonly IReadOnlyList<string> FileNames =
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

    /// <summary>Image side (28).</summary>
    public const int Side = 28;

    MnistData(byte[] images, byte[] labels, string folder) { Images = images; Labels = labels; Folder = folder; }

    /// <summary>All images, row-major, <c>Count * 28 * 28</c> bytes: train images then test images.</summary>
    public byte[] Images { get; }
    /// <summary>Digit of each image.</summary>
    public byte[] Labels { get; }
    /// <summary>Number of images.</summary>
    public int Count => Labels.Length;
    /// <summary>The folder the files were read from.</summary>
    public string Folder { get; }

    /// <summary>
    /// The folders searched for the idx files under a data directory, in order: <c>MNIST/raw</c> (torchvision's layout,
    /// which DomainBed uses), <c>MNIST/MNIST/raw</c> (where DomainBed's download script puts them), <c>MNIST</c>, and the
    /// directory itself.
    /// </summary>
    public static IReadOnlyList<string> CandidateFolders(string dataDir) =>
    [
        Path.Combine(dataDir, "MNIST", "raw"), Path.Combine(dataDir, "MNIST", "MNIST", "raw"),
        Path.Combine(dataDir, "MNIST"), dataDir,
    ];

    /// <summary>
    /// Finds and reads the four idx files (raw or <c>.gz</c>; also the "train-images.idx3-ubyte" spelling) in the first of
    /// <see cref="CandidateFolders"/> that holds them all. Throws <see cref="SfMoeException"/> naming what is missing.
    /// </summary>
    public static MnistData Load(string dataDir)
    {
        if (!Directory.Exists(dataDir))
            throw new DatasetException($"MNIST: data directory {Path.GetFullPath(dataDir)} does not exist");
        foreach (var folder in CandidateFolders(dataDir))
        {
            if (!Directory.Exists(folder)) continue;
            var files = FileNames.Select(n => Find(folder, n)).ToArray();
            if (files.All(f => f is not null)) return LoadFiles(files!, folder);
            if (files.Any(f => f is not null))
            {
                // Some but not all: the user's MNIST folder is incomplete; name what it lacks rather than looking on.
                var missing = FileNames.Where((n, i) => files[i] is null);
                throw new DatasetException(
                    $"MNIST: {Path.GetFullPath(folder)} holds some of the idx files but lacks {string.Join(", ", missing)} " +
                    $"(raw or .gz); run `Downloader.Fetch(\"MNIST\", \"{dataDir}\")` or copy the missing files there");
            }
        }
        throw new DatasetException(
            $"MNIST: the idx files ({string.Join(", ", FileNames)}, raw or .gz) were not found in any of " +
            $"{string.Join(", ", CandidateFolders(dataDir).Select(Path.GetFullPath))}; run `Downloader.Fetch(\"MNIST\", \"{dataDir}\")`");
    }

    static string? Find(string folder, string name)
    {
        string dotted = name.Replace("-idx", ".idx", StringComparison.Ordinal);   // train-images.idx3-ubyte
        foreach (var n in new[] { name, name + ".gz", dotted, dotted + ".gz" })
        {
            var p = Path.Combine(folder, n);
            if (File.Exists(p)) return p;
        }
        return null;
    }

    /// <summary>Reads the four files given in <see cref="FileNames"/> order.</summary>
    public static MnistData LoadFiles(IReadOnlyList<string> files, string folder)
    {
        var (trX, n1) = ReadIdx(files[0], 3);
        var (trY, n2) = ReadIdx(files[1], 1);
        var (teX, n3) = ReadIdx(files[2], 3);
        var (teY, n4) = ReadIdx(files[3], 1);
        if (n1 != n2) throw new DatasetException($"MNIST: {files[0]} has {n1} images but {files[1]} has {n2} labels");
        if (n3 != n4) throw new DatasetException($"MNIST: {files[2]} has {n3} images but {files[3]} has {n4} labels");
        foreach (var (y, f) in new[] { (trY, files[1]), (teY, files[3]) })
            foreach (var d in y)
                if (d > 9) throw new DatasetException($"MNIST: {f} has a label {d} outside 0..9");
        return new MnistData([.. trX, .. teX], [.. trY, .. teY], folder);
    }

    /// <summary>Reads an idx file of unsigned bytes (magic 0x0000080N, big-endian sizes); images must be 28x28.</summary>
    static (byte[] Data, int Count) ReadIdx(string path, int dims)
    {
        try
        {
            using var file = File.OpenRead(path);
            using Stream s = path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) ? new GZipStream(file, CompressionMode.Decompress) : file;
            Span<byte> head = stackalloc byte[4 + 4 * dims];
            s.ReadExactly(head);
            uint magic = BinaryPrimitives.ReadUInt32BigEndian(head);
            if (magic != 0x800u + (uint)dims)
                throw new DatasetException($"MNIST: {path} is not an idx file of {dims}-d unsigned bytes (magic 0x{magic:x8}, expected 0x{0x800 + dims:x8})");
            int count = BinaryPrimitives.ReadInt32BigEndian(head[4..]);
            long size = count;
            for (int d = 1; d < dims; d++)
            {
                int len = BinaryPrimitives.ReadInt32BigEndian(head[(4 + 4 * d)..]);
                if (len != Side) throw new DatasetException($"MNIST: {path} holds {len}-pixel sides, expected {Side}");
                size *= len;
            }
            if (count < 0 || size > Array.MaxLength) throw new DatasetException($"MNIST: {path} declares an impossible size");
            var data = new byte[size];
            try { s.ReadExactly(data); }
            catch (EndOfStreamException) { throw new DatasetException($"MNIST: {path} is truncated (expected {size} bytes of data after the header)"); }
            // Data past the declared size: a wrong header or a concatenated/corrupt file; either way not what it says.
            Span<byte> extra = stackalloc byte[1];
            if (s.Read(extra) != 0)
            {
                long have = s.CanSeek ? s.Length - head.Length : -1;
                throw new DatasetException(have >= 0
                    ? $"MNIST: {path} has {have - size} bytes of trailing data after the {size} its header declares ({count} items)"
                    : $"MNIST: {path} has trailing data after the {size} bytes its header declares ({count} items)");
            }
            return (data, count);
        }
        catch (Exception e) when (e is (IOException or InvalidDataException) and not EndOfStreamException)
        {
            throw new DatasetException($"MNIST: cannot read {path}: {e.Message}", e);
        }
        catch (EndOfStreamException)
        {
            throw new DatasetException($"MNIST: {path} is truncated (shorter than its header)");
        }
    }
}

/// <summary>
/// DomainBed's MNIST environments (<c>MultipleEnvironmentMNIST</c>): the 70,000 images are shuffled by
/// <c>torch.randperm(70000)</c>, and environment i takes the shuffled images i, i + n, i + 2n, ... (n environments).
/// </summary>
/// <remarks>
/// Randomness: DomainBed draws the permutation (and ColoredMNIST's coin flips) from torch's global generator seeded
/// with <c>--seed</c>. Here they come from a <c>torch.Generator</c> seeded with the dataset seed, in DomainBed's order
/// (randperm, then for each environment in turn: label flips, colour flips). With libtorch 2.10 (TorchSharp 0.107) the
/// permutation and the coin flips equal those of PyTorch 1.13 for the same seed (a test checks this against a fixture),
/// but PyTorch does not promise equal random streams across versions, so bit-identity with any DomainBed run is not
/// guaranteed.
/// </remarks>
internal sealed class MnistEnvironments : IMultiDomainDataset
{
    readonly IDomainEnvironment[] _envs;

    MnistEnvironments(DatasetSpec spec, IDomainEnvironment[] envs) { Spec = spec; _envs = envs; }

    /// <inheritdoc/>
    public DatasetSpec Spec { get; }
    /// <inheritdoc/>
    public IReadOnlyList<IDomainEnvironment> Environments => _envs;

    /// <summary>RotatedMNIST's angles in degrees, one environment each.</summary>
    public static readonly IReadOnlyList<int> RotatedAngles = [0, 15, 30, 45, 60, 75];
    /// <summary>ColoredMNIST's colour-flip probabilities e, one environment each (+90%, +80%, -90%).</summary>
    public static readonly IReadOnlyList<double> ColoredFlipProbabilities = [0.1, 0.2, 0.9];
    /// <summary>ColoredMNIST's label-flip probability.</summary>
    public const double ColoredLabelNoise = 0.25;

    /// <summary>
    /// RotatedMNIST: six environments rotated by 0, 15, ..., 75 degrees (bilinear, fill 0, as torchvision's rotate on a PIL
    /// image, <see cref="PilRotate"/>); images 28x28x1, labels the digits.
    /// </summary>
    public static MnistEnvironments Rotated(MnistData data, DatasetSpec spec, int seed)
    {
        var perm = Permutation(data.Count, seed, out var gen);
        gen.Dispose();
        int n = RotatedAngles.Count;
        var envs = new IDomainEnvironment[n];
        for (int e = 0; e < n; e++)
        {
            var idx = Take(perm, e, n);
            envs[e] = new RotatedEnvironment(spec.Environments[e], data, idx, RotatedAngles[e]);
        }
        return new MnistEnvironments(spec, envs);
    }

    /// <summary>
    /// ColoredMNIST: three environments; label = (digit &lt; 5) flipped with probability 0.25, colour = label XOR
    /// Bernoulli(e) for e = 0.1, 0.2, 0.9; the image is repeated into 2 channels and the channel other than the colour's
    /// is zeroed (colour 1 keeps channel 1). Images 28x28x2, 2 classes.
    /// </summary>
    public static MnistEnvironments Colored(MnistData data, DatasetSpec spec, int seed)
    {
        var perm = Permutation(data.Count, seed, out var gen);
        int n = ColoredFlipProbabilities.Count;
        var envs = new IDomainEnvironment[n];
        using (gen)
        {
            for (int e = 0; e < n; e++)
            {
                var idx = Take(perm, e, n);
                int m = idx.Length;
                var labelFlip = Rand(gen, m);
                var colourFlip = Rand(gen, m);
                var labels = new byte[m];
                var colours = new byte[m];
                float pLabel = (float)ColoredLabelNoise, pColour = (float)ColoredFlipProbabilities[e];
                for (int k = 0; k < m; k++)
                {
                    int y = data.Labels[idx[k]] < 5 ? 1 : 0;
                    y ^= labelFlip[k] < pLabel ? 1 : 0;
                    labels[k] = (byte)y;
                    colours[k] = (byte)(y ^ (colourFlip[k] < pColour ? 1 : 0));
                }
                envs[e] = new ColoredEnvironment(spec.Environments[e], data, idx, labels, colours);
            }
        }
        return new MnistEnvironments(spec, envs);
    }

    /// <summary>torch.randperm(count) from a generator seeded with <paramref name="seed"/>; the generator is returned for later draws.</summary>
    internal static int[] Permutation(int count, int seed, out torch.Generator generator)
    {
        generator = new torch.Generator((ulong)(uint)seed);
        using var p = torch.randperm(count, generator: generator);
        var longs = p.data<long>().ToArray();
        var perm = new int[count];
        for (int i = 0; i < count; i++) perm[i] = (int)longs[i];
        return perm;
    }

    static float[] Rand(torch.Generator gen, int m)
    {
        using var t = torch.rand(m, generator: gen);
        return t.data<float>().ToArray();
    }

    static int[] Take(int[] perm, int start, int step)
    {
        var r = new int[(perm.Length - start + step - 1) / step];
        for (int k = 0; k < r.Length; k++) r[k] = perm[start + k * step];
        return r;
    }

    sealed class RotatedEnvironment(string name, MnistData data, int[] index, int angle) : IDomainEnvironment
    {
        public string Name { get; } = name;
        public int Count => index.Length;
        public int LabelOf(int i) => data.Labels[index[i]];
        public string SourceOf(int i) => $"MNIST#{index[i]} rotated {angle} ({data.Folder})";
        public IReadOnlyList<Keypoint>? KeypointsOf(int i) { _ = index[i]; return null; }
        public ImageU8 Load(int i)
        {
            var src = data.Images.AsSpan(index[i] * MnistData.Side * MnistData.Side, MnistData.Side * MnistData.Side);
            return new ImageU8(MnistData.Side, MnistData.Side, 1, PilRotate.RotateBilinear(src, MnistData.Side, MnistData.Side, angle));
        }
    }

    sealed class ColoredEnvironment(string name, MnistData data, int[] index, byte[] labels, byte[] colours) : IDomainEnvironment
    {
        public string Name { get; } = name;
        public int Count => index.Length;
        public int LabelOf(int i) => labels[i];
        public int ColourOf(int i) => colours[i];
        public int DigitOf(int i) => data.Labels[index[i]];
        public string SourceOf(int i) => $"MNIST#{index[i]} colour {colours[i]} ({data.Folder})";
        public IReadOnlyList<Keypoint>? KeypointsOf(int i) { _ = index[i]; return null; }
        public ImageU8 Load(int i)
        {
            const int P = MnistData.Side * MnistData.Side;
            var src = data.Images.AsSpan(index[i] * P, P);
            var px = new byte[P * 2];
            int c = colours[i];
            for (int k = 0; k < P; k++) px[2 * k + c] = src[k];
            return new ImageU8(MnistData.Side, MnistData.Side, 2, px);
        }
    }

    /// <summary>The digit (0..9) behind sample <paramref name="i"/> of a ColoredMNIST environment, and its colour; for tests and analysis.</summary>
    public static (int Digit, int Colour) ColoredDetails(IDomainEnvironment env, int i) => env is ColoredEnvironment c
        ? (c.DigitOf(i), c.ColourOf(i))
        : throw new ArgumentException("not a ColoredMNIST environment", nameof(env));
}
