using System.Collections.Concurrent;
using System.Formats.Tar;
using System.IO.Compression;
using System.Text;
using SfMoe.Data;
using static SfMoe.Host.Tests.Data.DataTestSupport;

namespace SfMoe.Host.Tests.Data;

/// <summary>The downloader against a local HTTP server serving small archives built here (these machines have no internet).</summary>
public class DownloadTests : IDisposable
{
    readonly TempDir _tmp = new("sfmoe-dl-");
    readonly TestHttpServer _server = new();
    readonly Collect _progress = new();
    readonly CancellationTokenSource _bound = new(TimeSpan.FromSeconds(50));   // every fetch is bounded

    public void Dispose()
    {
        _server.Dispose();
        _tmp.Dispose();
        _bound.Dispose();
    }

    sealed class Collect : IProgress<DownloadProgress>
    {
        public ConcurrentQueue<DownloadProgress> Items { get; } = new();
        public void Report(DownloadProgress value) => Items.Enqueue(value);
        public string Messages => string.Join("\n", Items.Where(i => i.Message is not null).Select(i => i.Message));
    }

    DownloadOptions Options(bool keep = false) => new()
    {
        Mirror = _server.BaseUrl, RetryDelay = TimeSpan.FromMilliseconds(10), ReadTimeout = TimeSpan.FromSeconds(5), MaxAttempts = 4,
        KeepArchives = keep,
    };

    string DataDir => _tmp.Sub("data");

    static byte[] Zip(IEnumerable<(string Name, byte[] Data)> entries)
    {
        using var ms = new MemoryStream();
        using (var zip = new ZipArchive(ms, ZipArchiveMode.Create, leaveOpen: true))
            foreach (var (name, data) in entries)
            {
                using var s = zip.CreateEntry(name, CompressionLevel.Fastest).Open();
                s.Write(data);
            }
        return ms.ToArray();
    }

    static byte[] TarGz(IEnumerable<(string Name, byte[] Data)> entries)
    {
        using var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true))
        using (var tar = new TarWriter(gz, TarEntryFormat.Pax, leaveOpen: true))
        {
            foreach (var dir in entries.Select(e => e.Name[..e.Name.LastIndexOf('/')]).Distinct())
                tar.WriteEntry(new PaxTarEntry(TarEntryType.Directory, dir + "/"));
            foreach (var (name, data) in entries)
                tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, name) { DataStream = new MemoryStream(data) });
        }
        return ms.ToArray();
    }

    static readonly byte[] Pixel = Png(2, 2, 10, 200, 30);

    /// <summary>PACS.zip as DomainBed gets it: kfold/&lt;env&gt;/&lt;class&gt;/&lt;images&gt;, big enough to take a few reads.</summary>
    static byte[] PacsZip()
    {
        var spec = Datasets.GetSpec("PACS");
        var noise = new byte[300_000];
        new Random(1).NextBytes(noise);
        var entries = from env in spec.Environments from c in spec.Classes select ($"kfold/{env}/{c}/{c}_1.png", Pixel);
        return Zip(entries.Append(("kfold/readme_noise.bin", noise)));   // incompressible padding
    }

    static DatasetDownload WithChecksums(DatasetDownload recipe, Func<DownloadFile, string?> sha) =>
        recipe with { Files = recipe.Files.Select(f => f with { Sha256 = sha(f), Md5 = null, Size = null }).ToArray() };

    [Fact(Timeout = 60_000)]
    public async Task PacsZipIsUnpackedIntoTheLayoutAndOpens()
    {
        var zip = PacsZip();
        _server.Add("PACS/PACS.zip", zip);
        var result = await Downloader.FetchAsync("PACS", DataDir, _progress, Options(), _bound.Token);
        Assert.False(result.AlreadyPresent);
        Assert.Equal(Path.Combine(DataDir, "PACS"), result.Folder);
        var f = Assert.Single(result.Files);
        Assert.Equal((Sha256(zip), false), (f.Sha256, f.Verified));
        Assert.Contains($"sha256 {Sha256(zip)}", _progress.Messages);   // no checksum is pinned for PACS: the computed one is shown
        Assert.Contains("not verified", _progress.Messages);

        var ds = Datasets.Open("PACS", DataDir, SkiaDecode);
        Assert.Equal(["art_painting", "cartoon", "photo", "sketch"], ds.Spec.Environments);
        Assert.Equal(7, ds.Environments[1].Count);
        var img = ds.Environments[1].Load(3);
        Assert.Equal((10, 200, 30), ((int)img[0, 0, 0], (int)img[0, 0, 1], (int)img[0, 0, 2]));
        // nothing left behind: no archive, no .part, no temporary folders
        Assert.Equal(["PACS"], Directory.EnumerateFileSystemEntries(DataDir).Select(Path.GetFileName));
    }

    [Fact(Timeout = 60_000)]
    public async Task VlcsTarGzIsUnpackedIntoTheLayout()
    {
        var envs = Datasets.GetSpec("VLCS").Environments;
        var classes = Datasets.GetSpec("VLCS").Classes;
        var tgz = TarGz(from e in envs from c in classes select ($"VLCS/{e}/{c}/img.png", Pixel));
        _server.Add("VLCS/VLCS.tar.gz", tgz);
        await Downloader.FetchAsync("VLCS", DataDir, _progress, Options(), _bound.Token);
        var ds = Datasets.Open("VLCS", DataDir, SkiaDecode);
        Assert.Equal(["Caltech101", "LabelMe", "SUN09", "VOC2007"], ds.Spec.Environments);
        Assert.Equal(["bird", "car", "chair", "dog", "person"], ds.Spec.Classes);
    }

    [Fact(Timeout = 60_000)]
    public async Task MnistGzFilesLandInRawAndRotatedMnistOpens()
    {
        string src = WriteFakeMnist(_tmp.Sub("src"), 60, 12, gz: true);
        foreach (var name in MnistData.FileNames) _server.Add($"MNIST/{name}.gz", File.ReadAllBytes(Path.Combine(src, name + ".gz")));
        var recipe = WithChecksums(DownloadCatalog.Get("RotatedMNIST"), f => Sha256(File.ReadAllBytes(Path.Combine(src, f.FileName))));
        var result = await Downloader.FetchAsync(recipe, DataDir, _progress, Options(), _bound.Token);
        Assert.All(result.Files, f => Assert.True(f.Verified));
        Assert.True(File.Exists(Path.Combine(DataDir, "MNIST", "raw", "train-images-idx3-ubyte")));     // decompressed, as torchvision
        Assert.True(File.Exists(Path.Combine(DataDir, "MNIST", "raw", "train-images-idx3-ubyte.gz")));
        var ds = Datasets.Open("RotatedMNIST", DataDir, null);
        Assert.Equal(72, ds.Environments.Sum(e => e.Count));
    }

    [Fact(Timeout = 60_000)]
    public async Task AChecksumMismatchNamesTheFileAndBothHashesAndLeavesNothing()
    {
        var zip = PacsZip();
        _server.Add("PACS/PACS.zip", zip);
        string wrong = new('0', 64);
        var recipe = WithChecksums(DownloadCatalog.Get("PACS"), _ => wrong);
        var e = await Assert.ThrowsAnyAsync<SfMoeException>(() => Downloader.FetchAsync(recipe, DataDir, _progress, Options(), _bound.Token));
        Assert.Contains("checksum mismatch for PACS.zip", e.Message);
        Assert.Contains($"expected sha256 {wrong}", e.Message);
        Assert.Contains($"got {Sha256(zip)}", e.Message);
        Assert.False(Directory.Exists(Path.Combine(DataDir, "PACS")));
        Assert.Empty(Directory.EnumerateFiles(DataDir, "*", SearchOption.AllDirectories));   // no .part, no archive
        Assert.Empty(Directory.EnumerateDirectories(DataDir, ".sfmoe-extract-*"));

        // MD5-only files (DomainNet) are checked as well
        var md5Recipe = recipe with { Files = [recipe.Files[0] with { Sha256 = null, Md5 = new string('a', 32) }] };
        e = await Assert.ThrowsAnyAsync<SfMoeException>(() => Downloader.FetchAsync(md5Recipe, DataDir, _progress, Options(), _bound.Token));
        Assert.Contains("expected md5 aaaa", e.Message);
    }

    [Fact(Timeout = 60_000)]
    public async Task AnInterruptedTransferIsResumedWithARangeRequest()
    {
        var zip = PacsZip();
        _server.Add("PACS/PACS.zip", zip);
        _server.DropFirstResponseAfter = 100_000;
        var recipe = WithChecksums(DownloadCatalog.Get("PACS"), _ => Sha256(zip));
        var result = await Downloader.FetchAsync(recipe, DataDir, _progress, Options(), _bound.Token);
        Assert.True(Assert.Single(result.Files).Verified);
        var reqs = _server.Requests.ToArray();
        Assert.Equal(2, reqs.Length);
        Assert.Equal((null, 200), (reqs[0].Range, reqs[0].Status));
        Assert.Equal(206, reqs[1].Status);
        Assert.Matches(@"^bytes=\d+-$", reqs[1].Range);
        long resumedAt = long.Parse(reqs[1].Range!["bytes=".Length..^1]);
        Assert.InRange(resumedAt, 1, 100_000);   // everything received before the drop was kept
        Assert.Equal(7, Datasets.Open("PACS", DataDir, SkiaDecode).Environments[0].Count);
    }

    [Fact(Timeout = 60_000)]
    public async Task AServerWithoutRangeSupportRestartsTheFileCleanly()
    {
        var zip = PacsZip();
        _server.Add("PACS/PACS.zip", zip);
        _server.SupportsRange = false;
        _server.DropFirstResponseAfter = 150_000;
        var recipe = WithChecksums(DownloadCatalog.Get("PACS"), _ => Sha256(zip));
        var result = await Downloader.FetchAsync(recipe, DataDir, _progress, Options(), _bound.Token);
        Assert.Equal(Sha256(zip), Assert.Single(result.Files).Sha256);
        var reqs = _server.Requests.ToArray();
        Assert.Equal(2, reqs.Length);
        Assert.NotNull(reqs[1].Range);              // it asked to resume ...
        Assert.Equal(200, reqs[1].Status);          // ... got the whole file, and started over
        Assert.Contains("restarting from the beginning", _progress.Messages);
        Assert.Equal(4, Datasets.Open("PACS", DataDir, SkiaDecode).Environments.Count);
    }

    [Fact(Timeout = 60_000)]
    public async Task ADotPartLeftByAnEarlierRunIsResumed()
    {
        var zip = PacsZip();
        _server.Add("PACS/PACS.zip", zip);
        string downloads = Path.Combine(DataDir, Downloader.DownloadFolder);
        Directory.CreateDirectory(downloads);
        File.WriteAllBytes(Path.Combine(downloads, "PACS.zip.part"), zip[..123_456]);
        File.WriteAllText(Path.Combine(downloads, "PACS.zip.part.validator"), "\"v1\"");
        await Downloader.FetchAsync(WithChecksums(DownloadCatalog.Get("PACS"), _ => Sha256(zip)), DataDir, _progress, Options(), _bound.Token);
        var req = Assert.Single(_server.Requests);
        Assert.Equal(("bytes=123456-", 206), (req.Range, req.Status));

        // an archive put into .sfmoe-downloads by hand is used without any request
        using var other = new TempDir();
        Directory.CreateDirectory(Path.Combine(other.Path, Downloader.DownloadFolder));
        File.WriteAllBytes(Path.Combine(other.Path, Downloader.DownloadFolder, "PACS.zip"), zip);
        await Downloader.FetchAsync(WithChecksums(DownloadCatalog.Get("PACS"), _ => Sha256(zip)), other.Path, _progress, Options(), _bound.Token);
        Assert.Single(_server.Requests);
        Assert.True(Directory.Exists(Path.Combine(other.Path, "PACS", "photo")));
    }

    [Fact(Timeout = 60_000)]
    public async Task AnExistingDatasetFolderIsLeftAloneUnlessForced()
    {
        Directory.CreateDirectory(Path.Combine(DataDir, "PACS", "mine"));
        var result = await Downloader.FetchAsync("PACS", DataDir, _progress, Options(), _bound.Token);
        Assert.True(result.AlreadyPresent);
        Assert.Empty(_server.Requests);

        _server.Add("PACS/PACS.zip", PacsZip());
        result = await Downloader.FetchAsync("PACS", DataDir, _progress, Options() with { Force = true }, _bound.Token);
        Assert.False(result.AlreadyPresent);
        Assert.False(Directory.Exists(Path.Combine(DataDir, "PACS", "mine")));
        Assert.True(Directory.Exists(Path.Combine(DataDir, "PACS", "sketch")));
    }

    [Fact(Timeout = 60_000)]
    public async Task TerraIncognitaIsSortedIntoLocationsAndCategories()
    {
        string Ann(string images, string annotations) =>
            $"{{\"categories\": [{{\"id\": 1, \"name\": \"bobcat\"}}, {{\"id\": 2, \"name\": \"car\"}}, {{\"id\": 3, \"name\": \"empty\"}}], " +
            $"\"images\": [{images}], \"annotations\": [{annotations}]}}";
        var files = new Dictionary<string, string>
        {
            ["cis_test_annotations.json"] = Ann("{\"id\": \"a\", \"location\": 38, \"file_name\": \"a.jpg\"}, {\"id\": \"b\", \"location\": 99, \"file_name\": \"b.jpg\"}",
                "{\"image_id\": \"a\", \"category_id\": 1}, {\"image_id\": \"b\", \"category_id\": 1}"),
            ["cis_val_annotations.json"] = Ann("{\"id\": \"c\", \"location\": \"100\", \"file_name\": \"c.jpg\"}",
                "{\"image_id\": \"c\", \"category_id\": 3}, {\"image_id\": \"c\", \"category_id\": 1}, {\"image_id\": \"c\", \"category_id\": 2}"),
            ["train_annotations.json"] = Ann("{\"id\": \"d\", \"location\": 43, \"file_name\": \"d.jpg\"}, {\"id\": \"e\", \"location\": 46, \"file_name\": \"e.jpg\"}",
                "{\"image_id\": \"d\", \"category_id\": 3}, {\"image_id\": \"e\", \"category_id\": 1}"),
            ["trans_test_annotations.json"] = Ann("", ""),
            ["trans_val_annotations.json"] = Ann("", ""),
        };
        _server.Add("terra_incognita/eccv_18_annotations.tar.gz",
            TarGz(files.Select(kv => ($"eccv_18_annotation_files/{kv.Key}", Encoding.UTF8.GetBytes(kv.Value)))));
        _server.Add("terra_incognita/eccv_18_all_images_sm.tar.gz",
            TarGz("abcde".Select(c => ($"eccv_18_all_images_sm/{c}.jpg", Pixel))));
        await Downloader.FetchAsync("TerraIncognita", DataDir, _progress, Options(), _bound.Token);
        string root = Path.Combine(DataDir, "terra_incognita");
        var got = Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories)
            .Select(p => Path.GetRelativePath(root, p).Replace('\\', '/')).Order(StringComparer.Ordinal).ToArray();
        // b: location 99 is not used; c: in two categories (car is not one of the ten)
        Assert.Equal(["location_100/bobcat/c.jpg", "location_100/empty/c.jpg", "location_38/bobcat/a.jpg", "location_43/empty/d.jpg", "location_46/bobcat/e.jpg"], got);
    }

    [Fact(Timeout = 60_000)]
    public async Task DomainNetZipsAreMergedAndDomainBedsDuplicatesRemoved()
    {
        var dups = Downloader.DomainNetDuplicates();
        Assert.Equal(9431, dups.Count);
        string dup = dups.First(d => d.StartsWith("clipart/"));
        foreach (var f in DownloadCatalog.Get("DomainNet").Files)
        {
            string domain = Path.GetFileNameWithoutExtension(f.FileName);
            var entries = new List<(string, byte[])>
            {
                ($"{domain}/apple/{domain}_1.png", Pixel), ($"{domain}/{dup.Split('/')[1]}/{domain}_2.png", Pixel),
            };
            if (domain == "clipart") entries.Add((dup, Pixel));
            _server.Add(f.MirrorPath, Zip(entries));
        }
        var recipe = WithChecksums(DownloadCatalog.Get("DomainNet"), _ => null);
        await Downloader.FetchAsync(recipe, DataDir, _progress, Options(), _bound.Token);
        Assert.False(File.Exists(Path.Combine(DataDir, "domain_net", dup)));
        Assert.Contains("removed 1 duplicate", _progress.Messages);
        var ds = Datasets.Open("DomainNet", DataDir, SkiaDecode);
        Assert.Equal(["clipart", "infograph", "painting", "quickdraw", "real", "sketch"], ds.Spec.Environments);
        Assert.Equal((15001, 500), (ds.Spec.Steps, ds.Spec.CheckpointFreq));
    }

    [Fact(Timeout = 60_000)]
    public async Task AWebPageInsteadOfTheArchiveIsAnErrorWithAHint()
    {
        _server.Add("PACS/PACS.zip", Encoding.UTF8.GetBytes("<html>quota exceeded</html>"), "text/html; charset=utf-8");
        var e = await Assert.ThrowsAnyAsync<SfMoeException>(() => Downloader.FetchAsync("PACS", DataDir, _progress, Options(), _bound.Token));
        Assert.Contains("web page instead of PACS.zip", e.Message);
        Assert.Contains("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", e.Message);
        Assert.Single(_server.Requests);   // not retried
    }

    [Fact(Timeout = 60_000)]
    public async Task NotFoundNamesTheUrlAndLeavesNothing()
    {
        var e = await Assert.ThrowsAnyAsync<SfMoeException>(() => Downloader.FetchAsync("SVIRO", DataDir, _progress, Options(), _bound.Token));
        Assert.Contains($"{_server.BaseUrl}/sviro/sviro_grayscale_rectangle_classification.zip answered HTTP 404", e.Message);
        Assert.False(Directory.Exists(Path.Combine(DataDir, "sviro")));
    }

    [Fact(Timeout = 60_000)]
    public async Task TheMirrorCanComeFromTheEnvironment()
    {
        _server.Add("PACS/PACS.zip", PacsZip());
        var old = Environment.GetEnvironmentVariable(DownloadOptions.MirrorVariable);
        Environment.SetEnvironmentVariable(DownloadOptions.MirrorVariable, _server.BaseUrl + "/");
        try
        {
            await Downloader.FetchAsync("PACS", DataDir, _progress, Options() with { Mirror = null }, _bound.Token);
            Assert.Equal("/PACS/PACS.zip", Assert.Single(_server.Requests).Path);
        }
        finally { Environment.SetEnvironmentVariable(DownloadOptions.MirrorVariable, old); }
    }

    [Fact]
    public void ArchivesThatWriteOutsideTheirFolderAreRefused()
    {
        string evil = _tmp.Sub("evil.zip");
        File.WriteAllBytes(evil, Zip([("ok/a.txt", [1]), ("../../escaped.txt", [2])]));
        var e = Assert.ThrowsAny<SfMoeException>(() => Downloader.Extract(evil, _tmp.Sub("out")));
        Assert.Contains("outside", e.Message);
        Assert.False(File.Exists(Path.Combine(_tmp.Path, "..", "escaped.txt")));
    }

    [Fact]
    public void CatalogPinsOnlyChecksumsWithAPublicSource()
    {
        Assert.All(DownloadCatalog.Get("MNIST").Files, f => Assert.Matches("^[0-9a-f]{64}$", f.Sha256));
        Assert.Equal("MNIST", DownloadCatalog.Get("ColoredMNIST").Dataset);
        foreach (var name in new[] { "PACS", "VLCS", "OfficeHome", "TerraIncognita", "SVIRO" })
            Assert.All(DownloadCatalog.Get(name).Files, f => Assert.Null(f.Sha256));
        Assert.All(DownloadCatalog.Get("DomainNet").Files, f => Assert.Matches("^[0-9a-f]{32}$", f.Md5));
        Assert.Contains("no public download", Assert.ThrowsAny<SfMoeException>(() => DownloadCatalog.Get("CUB")).Message);
        Assert.Contains("unknown dataset Foo", Assert.ThrowsAny<SfMoeException>(() => DownloadCatalog.Get("Foo")).Message);
        Assert.Equal("https://drive.usercontent.google.com/download?id=X1&export=download&confirm=t",
            Downloader.ResolveUrl("https://drive.google.com/uc?id=X1"));
    }
}
