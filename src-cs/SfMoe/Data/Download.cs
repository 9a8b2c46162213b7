using System.Formats.Tar;
using System.Globalization;
using System.IO.Compression;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text.Json;

namespace SfMoe.Data;

/// <summary>How the downloaded files become the dataset folder.</summary>
public enum ArchiveLayout
{
    /// <summary>Unpack every archive; the archive's folder <see cref="DatasetDownload.TopFolder"/> becomes the dataset folder (PACS: kfold).</summary>
    RenameTopFolder,
    /// <summary>Unpack every archive into the dataset folder (DomainNet: one zip per domain), then delete DomainBed's duplicate list.</summary>
    MergeInto,
    /// <summary>TerraIncognita: sort the camera-trap images into location_*/category/ from the annotation JSON files.</summary>
    TerraIncognita,
    /// <summary>The files themselves (MNIST's .gz idx files): kept in <c>raw/</c> and decompressed beside them, as torchvision does.</summary>
    RawFiles,
}

/// <summary>One file to download.</summary>
/// <param name="FileName">Local name (and archive type, from the extension).</param>
/// <param name="Url">Where DomainBed gets it (Google Drive <c>uc?id=</c> links are fetched through Drive's direct-download endpoint).</param>
/// <param name="MirrorPath">Path below a mirror's base URL (<see cref="DownloadOptions.Mirror"/>), e.g. "PACS/PACS.zip".</param>
/// <param name="Sha256">Expected SHA-256 (lower-case hex), or null when not known: then the computed one is reported.</param>
/// <param name="Size">Expected size in bytes, or null.</param>
/// <param name="Md5">Expected MD5 as published upstream, or null; checked as well when given.</param>
public sealed record DownloadFile(string FileName, string Url, string MirrorPath, string? Sha256 = null, long? Size = null, string? Md5 = null)
{
    /// <summary>Other URLs tried, in order, when <see cref="Url"/> fails with an HTTP error (not used with a mirror).</summary>
    public IReadOnlyList<string> AlternateUrls { get; init; } = [];
    /// <summary>Where the checksums come from, or why there are none.</summary>
    public string? Note { get; init; }
}

/// <summary>How to fetch one dataset.</summary>
/// <param name="Dataset">Dataset name (Datasets registry).</param>
/// <param name="DirName">Folder under the data directory.</param>
/// <param name="Files">The files to download.</param>
/// <param name="Layout">How they become the folder.</param>
/// <param name="TopFolder">For <see cref="ArchiveLayout.RenameTopFolder"/>: the archive's folder that becomes the dataset folder.</param>
public sealed record DatasetDownload(string Dataset, string DirName, IReadOnlyList<DownloadFile> Files, ArchiveLayout Layout, string? TopFolder = null);

/// <summary>Progress of a fetch.</summary>
/// <param name="Stage">"download", "verify", "extract", "layout", "info" or "warning".</param>
/// <param name="File">The file concerned.</param>
/// <param name="Done">Bytes (or entries) done.</param>
/// <param name="Total">Total, when known.</param>
/// <param name="Message">A line for people, when there is something to say.</param>
public sealed record DownloadProgress(string Stage, string File, long Done, long? Total, string? Message = null);

/// <summary>Options for <see cref="Downloader"/>.</summary>
public sealed record DownloadOptions
{
    /// <summary>Environment variable with a base URL that replaces every source (a local mirror; tests use a local server).</summary>
    public const string MirrorVariable = "SFMOE_DOWNLOAD_MIRROR";

    /// <summary>Base URL of a mirror: file f is fetched from <c>Mirror/f.MirrorPath</c>. Default: <c>SFMOE_DOWNLOAD_MIRROR</c>, else the original URLs.</summary>
    public string? Mirror { get; init; }
    /// <summary>HTTP handler (tests, proxies); null for a default one.</summary>
    public HttpMessageHandler? Handler { get; init; }
    /// <summary>Attempts per file, resuming after dropped connections (default 6).</summary>
    public int MaxAttempts { get; init; } = 6;
    /// <summary>Abort a transfer that receives nothing for this long, then resume (default 60 s).</summary>
    public TimeSpan ReadTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Pause before the first retry; doubled each time (default 2 s).</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Keep the downloaded archives in <c>.sfmoe-downloads/</c> after unpacking (DomainBed deletes them).</summary>
    public bool KeepArchives { get; init; }
    /// <summary>Replace a dataset folder that already exists (otherwise an existing, non-empty folder is left alone).</summary>
    public bool Force { get; init; }
}

/// <summary>A downloaded and checked file.</summary>
/// <param name="FileName">Its name.</param>
/// <param name="Sha256">Its SHA-256.</param>
/// <param name="Size">Its size.</param>
/// <param name="Verified">Whether a pinned checksum (SHA-256 or MD5) was checked (false: none is known; the computed SHA-256 was reported).</param>
public sealed record FetchedFile(string FileName, string Sha256, long Size, bool Verified);

/// <summary>What <see cref="Downloader.Fetch"/> did.</summary>
/// <param name="Dataset">Dataset name.</param>
/// <param name="Folder">The dataset folder.</param>
/// <param name="Files">The files fetched (empty when the folder was already there).</param>
/// <param name="AlreadyPresent">True when the folder existed and nothing was done.</param>
/// <param name="Warnings">Things skipped on the way (e.g. annotated images missing from an archive).</param>
public sealed record DownloadResult(string Dataset, string Folder, IReadOnlyList<FetchedFile> Files, bool AlreadyPresent, IReadOnlyList<string> Warnings);

/// <summary>
/// Where DomainBed's download.py gets each dataset, and the checksums known for those files. SHA-256 values are pinned
/// only where a public source states them; the rest are null (the downloader then prints the computed value).
/// </summary>
public static class DownloadCatalog
{
    const string Drive = "https://drive.google.com/uc?id=";
    const string DomainNetBase = "http://csr.bu.edu/ftp/visda/2019/multi-source/";
    const string Lila = "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps/";
    const string NoSha = "no SHA-256 is published; the downloader prints the computed one";

    static DownloadFile Mnist(string name, string sha256, long size, string md5) =>
        new(name, "https://ossci-datasets.s3.amazonaws.com/mnist/" + name, "MNIST/" + name, sha256, size, md5)
        {
            AlternateUrls = ["http://yann.lecun.com/exdb/mnist/" + name, "https://storage.googleapis.com/cvdf-datasets/mnist/" + name],
            Note = "SHA-256 and size as published by several public MNIST fetchers (TensorFlow's mirror); MD5 as in torchvision",
        };

    static DownloadFile DomainNet(string path, string md5) =>
        new(Path.GetFileName(path), DomainNetBase + path, "domain_net/" + Path.GetFileName(path), Md5: md5)
        { Note = "MD5 as published by public DomainNet loaders; " + NoSha };

    /// <summary>Every dataset that can be downloaded.</summary>
    public static readonly IReadOnlyList<DatasetDownload> All =
    [
        new("PACS", "PACS", [new("PACS.zip", Drive + "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", "PACS/PACS.zip") { Note = NoSha }],
            ArchiveLayout.RenameTopFolder, "kfold"),
        new("VLCS", "VLCS", [new("VLCS.tar.gz", Drive + "1skwblH1_okBwxWxmRsp9_qi15hyPpxg8", "VLCS/VLCS.tar.gz") { Note = NoSha }],
            ArchiveLayout.RenameTopFolder, "VLCS"),
        new("OfficeHome", "office_home",
            [new("office_home.zip", Drive + "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC", "office_home/office_home.zip") { Note = NoSha }],
            ArchiveLayout.RenameTopFolder, "OfficeHomeDataset_10072016"),
        new("TerraIncognita", "terra_incognita",
        [
            new("terra_incognita_images.tar.gz", Lila + "eccv_18_all_images_sm.tar.gz", "terra_incognita/eccv_18_all_images_sm.tar.gz") { Note = NoSha },
            new("eccv_18_annotations.tar.gz", Lila + "eccv_18_annotations.tar.gz", "terra_incognita/eccv_18_annotations.tar.gz") { Note = NoSha },
        ], ArchiveLayout.TerraIncognita),
        new("DomainNet", "domain_net",
        [
            DomainNet("groundtruth/clipart.zip", "cd0d8f2d77a4e181449b78ed62bccf1e"),
            DomainNet("infograph.zip", "720380b86f9e6ab4805bb38b6bd135f8"),
            DomainNet("groundtruth/painting.zip", "1ae32cdb4f98fe7ab5eb0a351768abfd"),
            DomainNet("quickdraw.zip", "bdc1b6f09f277da1a263389efe0c7a66"),
            DomainNet("real.zip", "dcc47055e8935767784b7162e7c7cca6"),
            DomainNet("sketch.zip", "658d8009644040ff7ce30bb2e820850f"),
        ], ArchiveLayout.MergeInto),
        new("SVIRO", "sviro",
            [new("sviro_grayscale_rectangle_classification.zip", "https://sviro.kl.dfki.de/?wpdmdl=1731", "sviro/sviro_grayscale_rectangle_classification.zip") { Note = NoSha }],
            ArchiveLayout.RenameTopFolder, "SVIRO_DOMAINBED"),
        new("MNIST", "MNIST",
        [
            Mnist("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            Mnist("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881, "d53e105ee54ea40749a09fcbcd1e9432"),
            Mnist("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877, "9fb629c4189551a2d022fa330f9573f3"),
            Mnist("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542, "ec29112dd5afa0611ce80d1b7f02629c"),
        ], ArchiveLayout.RawFiles),
    ];

    /// <summary>
    /// The recipe for a dataset name (registry names and aliases; RotatedMNIST and ColoredMNIST fetch MNIST). Throws
    /// <see cref="SfMoeException"/> for datasets without a download (CUB-DG, Synthetic) and unknown names.
    /// </summary>
    public static DatasetDownload Get(string dataset)
    {
        string name = dataset;
        if (!string.Equals(name, "MNIST", StringComparison.OrdinalIgnoreCase))
        {
            var spec = Datasets.TryGetSpec(dataset)
                ?? throw new DatasetException($"unknown dataset {dataset}; downloadable: {string.Join(", ", All.Select(d => d.Dataset))}");
            name = spec.Name switch { "RotatedMNIST" or "ColoredMNIST" => "MNIST", _ => spec.Name };
            if (name == "CUB-DG")
                throw new DatasetException("CUB-DG has no public download (SF-MoE's code has no generation script); put it at <data-dir>/CUB_DG/<env>/<class>/<images>");
            if (name == "Synthetic")
                throw new DatasetException("Synthetic needs no download: it is rendered on the fly (SyntheticDataset.WriteImageFolder writes a copy)");
        }
        return All.First(d => string.Equals(d.Dataset, name, StringComparison.OrdinalIgnoreCase));
    }
}

/// <summary>
/// Fetches DomainBed's public datasets into a data directory. Downloads are resumable (HTTP Range on a <c>.part</c>
/// file, resumed after dropped connections; a server without Range support restarts the file cleanly), verified (SHA-256
/// and MD5 where known, else the computed SHA-256 is reported) and atomic (download to .part, verify, rename; unpack into
/// a temporary folder, then rename it into place). A failure leaves no half-written dataset folder.
/// </summary>
/// <remarks>
/// Downloaded archives go to <c>&lt;dataDir&gt;/.sfmoe-downloads/</c>; an archive placed there by hand (e.g. from a browser,
/// when Google Drive refuses an automatic download) is used as it is, after its checksum is checked. One fetch per
/// dataset and data directory at a time.
/// </remarks>
public static class Downloader
{
    /// <summary>Folder under the data directory that holds downloads (and their .part files).</summary>
    public const string DownloadFolder = ".sfmoe-downloads";
    const string ExtractPrefix = ".sfmoe-extract-";

    /// <summary>Synchronous <see cref="FetchAsync(string, string, IProgress{DownloadProgress}?, DownloadOptions?, CancellationToken)"/>.</summary>
    public static DownloadResult Fetch(string dataset, string dataDir, IProgress<DownloadProgress>? progress = null, DownloadOptions? options = null) =>
        FetchAsync(dataset, dataDir, progress, options).GetAwaiter().GetResult();

    /// <summary>Fetches a dataset by name (see <see cref="DownloadCatalog.Get"/>) into <paramref name="dataDir"/>.</summary>
    public static Task<DownloadResult> FetchAsync(string dataset, string dataDir, IProgress<DownloadProgress>? progress = null,
        DownloadOptions? options = null, CancellationToken cancel = default) =>
        FetchAsync(DownloadCatalog.Get(dataset), dataDir, progress, options, cancel);

    /// <summary>Fetches a dataset from an explicit recipe (e.g. a catalog entry with other checksums or URLs).</summary>
    public static async Task<DownloadResult> FetchAsync(DatasetDownload recipe, string dataDir, IProgress<DownloadProgress>? progress = null,
        DownloadOptions? options = null, CancellationToken cancel = default)
    {
        options ??= new DownloadOptions();
        dataDir = Path.GetFullPath(dataDir);
        Directory.CreateDirectory(dataDir);
        string target = Path.Combine(dataDir, recipe.DirName);
        if (!options.Force && Directory.Exists(target) && Directory.EnumerateFileSystemEntries(target).Any())
        {
            progress?.Report(new("info", recipe.DirName, 0, null, $"{target} already exists; nothing to do (use Force to replace it)"));
            return new DownloadResult(recipe.Dataset, target, [], true, []);
        }
        string downloads = Path.Combine(dataDir, DownloadFolder);
        Directory.CreateDirectory(downloads);
        foreach (var stale in Directory.EnumerateDirectories(dataDir, ExtractPrefix + recipe.DirName + "-*"))
            TryDeleteDirectory(stale);

        string? mirror = options.Mirror ?? Environment.GetEnvironmentVariable(DownloadOptions.MirrorVariable);
        if (string.IsNullOrWhiteSpace(mirror)) mirror = null;
        using var http = new HttpClient(options.Handler ?? new SocketsHttpHandler
        {
            AutomaticDecompression = DecompressionMethods.None, ConnectTimeout = TimeSpan.FromSeconds(30),
        }, disposeHandler: options.Handler is null) { Timeout = Timeout.InfiniteTimeSpan };
        http.DefaultRequestHeaders.UserAgent.ParseAdd("SfMoe-downloader/1.0");

        var fetched = new List<FetchedFile>();
        var archives = new List<string>();
        foreach (var file in recipe.Files)
        {
            string dest = Path.Combine(downloads, file.FileName);
            var urls = mirror is not null ? [mirror.TrimEnd('/') + "/" + file.MirrorPath.TrimStart('/')] : new[] { file.Url }.Concat(file.AlternateUrls).ToList();
            fetched.Add(await DownloadFileAsync(file, urls, dest, http, options, progress, cancel).ConfigureAwait(false));
            archives.Add(dest);
        }

        var warnings = new List<string>();
        string tmp = Path.Combine(dataDir, $"{ExtractPrefix}{recipe.DirName}-{Guid.NewGuid().ToString("N")[..8]}");
        try
        {
            Directory.CreateDirectory(tmp);
            string result = Layout(recipe, archives, tmp, progress, warnings, cancel);
            if (Directory.Exists(target))
            {
                if (!Directory.EnumerateFileSystemEntries(target).Any()) Directory.Delete(target);
                else
                {
                    string old = Path.Combine(tmp, ".replaced");
                    Directory.Move(target, old);
                }
            }
            Directory.Move(result, target);
            progress?.Report(new("info", recipe.DirName, 0, null, $"{recipe.Dataset} is ready at {target}"));
        }
        finally
        {
            TryDeleteDirectory(tmp);
        }
        if (!options.KeepArchives)
            foreach (var a in archives) TryDelete(a);
        if (!Directory.EnumerateFileSystemEntries(downloads).Any()) TryDeleteDirectory(downloads);
        return new DownloadResult(recipe.Dataset, target, fetched, false, warnings);
    }

    /// <summary>
    /// Downloads one file to <paramref name="destination"/> through <c>destination.part</c>, resuming with Range requests
    /// after interruptions, then checks it and renames it into place. A file already at <paramref name="destination"/>
    /// is checked and kept. Throws <see cref="SfMoeException"/> on a checksum mismatch (the .part is deleted) or when
    /// every attempt failed (the .part is kept for the next run).
    /// </summary>
    public static async Task<FetchedFile> DownloadFileAsync(DownloadFile file, IReadOnlyList<string> urls, string destination, HttpClient http,
        DownloadOptions options, IProgress<DownloadProgress>? progress, CancellationToken cancel)
    {
        if (File.Exists(destination))
        {
            var (sha, md5, len) = await HashAsync(destination, cancel).ConfigureAwait(false);
            var problem = Mismatch(file, sha, md5, len);
            if (problem is not null)
                throw new DatasetException($"{destination} exists but does not match: {problem}; delete it to download it again");
            return Checked(file, sha, len, progress);
        }
        string part = destination + ".part";
        string validatorFile = part + ".validator";
        Exception? last = null;
        foreach (var url in urls)
        {
            var outcome = await TryUrlAsync(file, ResolveUrl(url), part, validatorFile, http, options, progress, cancel).ConfigureAwait(false);
            if (outcome is null) { last = null; break; }
            last = outcome;
            if (outcome is RetryableException) break;   // attempts exhausted on a reachable server: keep the .part, stop
        }
        if (last is not null)
            throw new DatasetException($"cannot download {file.FileName}: {last.Message}" +
                (File.Exists(part) ? $" ({new FileInfo(part).Length} bytes kept in {part}; run again to resume)" : ""), last);

        progress?.Report(new("verify", file.FileName, 0, new FileInfo(part).Length));
        var (s, m, l) = await HashAsync(part, cancel).ConfigureAwait(false);
        var mismatch = Mismatch(file, s, m, l);
        if (mismatch is not null)
        {
            TryDelete(part);
            TryDelete(validatorFile);
            throw new DatasetException($"checksum mismatch for {file.FileName} from {urls[0]}: {mismatch}; the download was deleted");
        }
        File.Move(part, destination);
        TryDelete(validatorFile);
        return Checked(file, s, l, progress);
    }

    sealed class RetryableException(string message, Exception? inner = null) : Exception(message, inner);

    /// <summary>Downloads from one URL with resumption; null on success, else the error (retryable: attempts ran out).</summary>
    static async Task<Exception?> TryUrlAsync(DownloadFile file, string url, string part, string validatorFile, HttpClient http,
        DownloadOptions options, IProgress<DownloadProgress>? progress, CancellationToken cancel)
    {
        var delay = options.RetryDelay;
        Exception? last = null;
        for (int attempt = 1; attempt <= Math.Max(1, options.MaxAttempts); attempt++)
        {
            cancel.ThrowIfCancellationRequested();
            if (attempt > 1)
            {
                progress?.Report(new("warning", file.FileName, File.Exists(part) ? new FileInfo(part).Length : 0, null,
                    $"{file.FileName}: {last?.Message}; retrying ({attempt}/{options.MaxAttempts}) in {delay.TotalSeconds:0.#} s"));
                await Task.Delay(delay, cancel).ConfigureAwait(false);
                delay *= 2;
            }
            try
            {
                if (await TransferAsync(file, url, part, validatorFile, http, options, progress, cancel).ConfigureAwait(false))
                    return null;
                last = new RetryableException("the transfer ended before the end of the file");
            }
            catch (HttpStatusException e) when (!e.Retryable) { return e; }
            catch (HtmlInsteadOfFileException e) { return e; }
            catch (Exception e) when (e is HttpRequestException or IOException or TimeoutException or HttpStatusException
                                          || (e is OperationCanceledException && !cancel.IsCancellationRequested))
            {
                last = e is OperationCanceledException ? new TimeoutException($"no data for {options.ReadTimeout.TotalSeconds:0.#} s") : e;
            }
        }
        return new RetryableException($"{url}: {last?.Message} (after {options.MaxAttempts} attempts)", last);
    }

    sealed class HttpStatusException(HttpStatusCode code, string url)
        : Exception($"{url} answered HTTP {(int)code} {code}")
    {
        public bool Retryable { get; } = (int)code >= 500 || code == HttpStatusCode.RequestTimeout || code == HttpStatusCode.TooManyRequests;
    }

    sealed class HtmlInsteadOfFileException(string message) : Exception(message);

    /// <summary>One request: appends to the .part (or restarts it); true when the file is complete.</summary>
    static async Task<bool> TransferAsync(DownloadFile file, string url, string part, string validatorFile, HttpClient http,
        DownloadOptions options, IProgress<DownloadProgress>? progress, CancellationToken cancel)
    {
        long have = File.Exists(part) ? new FileInfo(part).Length : 0;
        using var request = new HttpRequestMessage(HttpMethod.Get, url);
        string? validator = have > 0 && File.Exists(validatorFile) ? File.ReadAllText(validatorFile) : null;
        if (have > 0)
        {
            request.Headers.Range = new RangeHeaderValue(have, null);
            // If-Range: resume only if the file is unchanged (a strong ETag or the Last-Modified date), else get it whole
            if (validator is not null && validator.StartsWith('"'))
                request.Headers.IfRange = new RangeConditionHeaderValue(new EntityTagHeaderValue(validator));
            else if (validator is not null && DateTimeOffset.TryParse(validator, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var lm))
                request.Headers.IfRange = new RangeConditionHeaderValue(lm);
        }
        using var headerCts = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        headerCts.CancelAfter(options.ReadTimeout);
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, headerCts.Token).ConfigureAwait(false);

        long? total;
        bool append;
        switch (response.StatusCode)
        {
            case HttpStatusCode.PartialContent:
                var cr = response.Content.Headers.ContentRange;
                if (cr?.From != have)
                {
                    // not the range we asked for: start over
                    TryDelete(part);
                    throw new IOException($"server sent bytes from {cr?.From} when asked for {have}");
                }
                total = cr.Length;
                append = true;
                break;
            case HttpStatusCode.OK:
                total = response.Content.Headers.ContentLength;
                append = false;
                if (have > 0)
                    progress?.Report(new("warning", file.FileName, 0, total,
                        $"{file.FileName}: the server does not resume (or the file changed); restarting from the beginning"));
                break;
            case HttpStatusCode.RequestedRangeNotSatisfiable:
                long? size = response.Content.Headers.ContentRange?.Length;
                if (have > 0 && size == have) return true;   // the .part is already complete
                TryDelete(part);
                throw new IOException($"range {have}- not satisfiable (server size {size?.ToString() ?? "unknown"}); restarting");
            default:
                throw new HttpStatusException(response.StatusCode, url);
        }
        var mediaType = response.Content.Headers.ContentType?.MediaType;
        if (mediaType is "text/html" && !file.FileName.EndsWith(".html", StringComparison.OrdinalIgnoreCase))
            throw new HtmlInsteadOfFileException(
                $"{url} returned a web page instead of {file.FileName} (Google Drive's quota or confirmation page, or a moved file); " +
                $"download it with a browser from {file.Url} and put it at {Path.ChangeExtension(part, null)}, then run again");

        if (!append)
        {
            var etag = response.Headers.ETag;
            var v = etag is { IsWeak: false } ? etag.Tag : response.Content.Headers.LastModified?.ToString("R", CultureInfo.InvariantCulture);
            if (v is not null) File.WriteAllText(validatorFile, v); else TryDelete(validatorFile);
        }

        await using var body = await response.Content.ReadAsStreamAsync(cancel).ConfigureAwait(false);
        await using var output = new FileStream(part, append ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        var buffer = new byte[1 << 16];
        long done = append ? have : 0;
        long lastReport = -1;
        while (true)
        {
            int n;
            using (var readCts = CancellationTokenSource.CreateLinkedTokenSource(cancel))
            {
                readCts.CancelAfter(options.ReadTimeout);
                n = await body.ReadAsync(buffer, readCts.Token).ConfigureAwait(false);
            }
            if (n == 0) break;
            await output.WriteAsync(buffer.AsMemory(0, n), cancel).ConfigureAwait(false);
            done += n;
            if (done - lastReport >= 1 << 20 || lastReport < 0)
            {
                progress?.Report(new("download", file.FileName, done, total));
                lastReport = done;
            }
        }
        await output.FlushAsync(cancel).ConfigureAwait(false);
        progress?.Report(new("download", file.FileName, done, total));
        return total is null || done == total;
    }

    /// <summary>Google Drive's <c>uc?id=X</c> links answer large files with a confirmation page; ask the direct endpoint instead.</summary>
    internal static string ResolveUrl(string url)
    {
        const string prefix = "https://drive.google.com/uc?id=";
        return url.StartsWith(prefix, StringComparison.Ordinal)
            ? $"https://drive.usercontent.google.com/download?id={url[prefix.Length..]}&export=download&confirm=t"
            : url;
    }

    static string? Mismatch(DownloadFile file, string sha, string md5, long len)
    {
        if (file.Size is long size && size != len) return $"expected {size} bytes, got {len} (sha256 {sha})";
        if (file.Sha256 is not null && !string.Equals(file.Sha256, sha, StringComparison.OrdinalIgnoreCase))
            return $"expected sha256 {file.Sha256}, got {sha}";
        if (file.Md5 is not null && !string.Equals(file.Md5, md5, StringComparison.OrdinalIgnoreCase))
            return $"expected md5 {file.Md5}, got {md5} (sha256 {sha})";
        return null;
    }

    static FetchedFile Checked(DownloadFile file, string sha, long len, IProgress<DownloadProgress>? progress)
    {
        bool verified = file.Sha256 is not null || file.Md5 is not null;
        progress?.Report(new("verify", file.FileName, len, len, verified
            ? $"{file.FileName}: checksum verified (sha256 {sha})"
            : $"{file.FileName}: sha256 {sha} ({len} bytes); no checksum is pinned for this file, so it was not verified"));
        return new FetchedFile(file.FileName, sha, len, verified);
    }

    static async Task<(string Sha256, string Md5, long Length)> HashAsync(string path, CancellationToken cancel)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var md5 = IncrementalHash.CreateHash(HashAlgorithmName.MD5);
        await using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, useAsync: true);
        var buffer = new byte[1 << 20];
        long len = 0;
        int n;
        while ((n = await s.ReadAsync(buffer, cancel).ConfigureAwait(false)) > 0)
        {
            sha.AppendData(buffer, 0, n);
            md5.AppendData(buffer, 0, n);
            len += n;
        }
        return (Convert.ToHexStringLower(sha.GetHashAndReset()), Convert.ToHexStringLower(md5.GetHashAndReset()), len);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Unpacking and layout

    static string Layout(DatasetDownload recipe, List<string> archives, string tmp, IProgress<DownloadProgress>? progress,
        List<string> warnings, CancellationToken cancel)
    {
        string extract = Path.Combine(tmp, "extract");
        Directory.CreateDirectory(extract);
        switch (recipe.Layout)
        {
            case ArchiveLayout.RawFiles:
            {
                string raw = Path.Combine(extract, "raw");
                Directory.CreateDirectory(raw);
                foreach (var a in archives)
                {
                    string name = Path.GetFileName(a);
                    File.Copy(a, Path.Combine(raw, name));
                    if (name.EndsWith(".gz", StringComparison.OrdinalIgnoreCase))
                    {
                        progress?.Report(new("extract", name, 0, null));
                        using var gz = new GZipStream(File.OpenRead(a), CompressionMode.Decompress);
                        using var o = File.Create(Path.Combine(raw, name[..^3]));
                        gz.CopyTo(o);
                    }
                }
                return extract;
            }
            case ArchiveLayout.RenameTopFolder:
            {
                foreach (var a in archives) Extract(a, extract, progress, cancel);
                string top = Path.Combine(extract, recipe.TopFolder!);
                if (!Directory.Exists(top))
                    throw new DatasetException(
                        $"{recipe.Dataset}: the archive has no folder {recipe.TopFolder}/ (it holds: " +
                        $"{string.Join(", ", Directory.EnumerateFileSystemEntries(extract).Select(Path.GetFileName).Take(10))})");
                return top;
            }
            case ArchiveLayout.MergeInto:
            {
                foreach (var a in archives) Extract(a, extract, progress, cancel);
                if (recipe.Dataset == "DomainNet") RemoveDomainNetDuplicates(extract, progress);
                return extract;
            }
            case ArchiveLayout.TerraIncognita:
            {
                foreach (var a in archives) Extract(a, extract, progress, cancel);
                string result = Path.Combine(tmp, "result");
                BuildTerraIncognita(extract, result, progress, warnings);
                return result;
            }
            default: throw new ArgumentOutOfRangeException(nameof(recipe), recipe.Layout, "unknown layout");
        }
    }

    /// <summary>Unpacks a .zip, .tar.gz / .tgz or .tar into <paramref name="into"/>, refusing entries that would land outside it.</summary>
    public static void Extract(string archive, string into, IProgress<DownloadProgress>? progress = null, CancellationToken cancel = default)
    {
        string name = Path.GetFileName(archive);
        string root = Path.GetFullPath(into) + Path.DirectorySeparatorChar;
        string Safe(string entry)
        {
            string full = Path.GetFullPath(Path.Combine(root, entry.Replace('\\', '/')));
            if (!full.StartsWith(root, StringComparison.Ordinal) && full + Path.DirectorySeparatorChar != root)
                throw new DatasetException($"{name}: entry {entry} would be written outside {into}; refusing the archive");
            return full;
        }
        long count = 0;
        try
        {
            if (name.EndsWith(".zip", StringComparison.OrdinalIgnoreCase))
            {
                using var zip = ZipFile.OpenRead(archive);
                foreach (var e in zip.Entries)
                {
                    cancel.ThrowIfCancellationRequested();
                    string path = Safe(e.FullName);
                    if (e.FullName.EndsWith('/') || e.FullName.EndsWith('\\')) { Directory.CreateDirectory(path); continue; }
                    Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                    e.ExtractToFile(path, overwrite: true);
                    if (++count % 1000 == 0) progress?.Report(new("extract", name, count, zip.Entries.Count));
                }
            }
            else if (name.EndsWith(".tar.gz", StringComparison.OrdinalIgnoreCase) || name.EndsWith(".tgz", StringComparison.OrdinalIgnoreCase)
                     || name.EndsWith(".tar", StringComparison.OrdinalIgnoreCase))
            {
                using var file = File.OpenRead(archive);
                using Stream s = name.EndsWith(".tar", StringComparison.OrdinalIgnoreCase) ? file : new GZipStream(file, CompressionMode.Decompress);
                using var tar = new TarReader(s);
                TarEntry? e;
                while ((e = tar.GetNextEntry()) is not null)
                {
                    cancel.ThrowIfCancellationRequested();
                    string path = Safe(e.Name);
                    switch (e.EntryType)
                    {
                        case TarEntryType.Directory:
                            Directory.CreateDirectory(path);
                            break;
                        case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                            e.ExtractToFile(path, overwrite: true);
                            break;
                        default:
                            progress?.Report(new("warning", name, count, null, $"{name}: skipped {e.EntryType} entry {e.Name}"));
                            break;
                    }
                    if (++count % 1000 == 0) progress?.Report(new("extract", name, count, null));
                }
            }
            else throw new DatasetException($"{name}: unknown archive type (expected .zip, .tar.gz, .tgz or .tar)");
        }
        catch (Exception ex) when (ex is InvalidDataException or EndOfStreamException or FormatException)
        {
            throw new DatasetException($"{name}: the archive is damaged: {ex.Message}", ex);
        }
        progress?.Report(new("extract", name, count, count));
    }

    /// <summary>The DomainNet files DomainBed deletes after unpacking (paths relative to domain_net/, '/'-separated).</summary>
    public static IReadOnlyList<string> DomainNetDuplicates()
    {
        using var s = typeof(Downloader).Assembly.GetManifestResourceStream("SfMoe.Data.domain_net_duplicates.txt.gz")
            ?? throw new InvalidOperationException("embedded resource domain_net_duplicates.txt.gz is missing");
        using var gz = new GZipStream(s, CompressionMode.Decompress);
        using var reader = new StreamReader(gz);
        var list = new List<string>();
        string? line;
        while ((line = reader.ReadLine()) is not null)
            if (line.Trim().Length > 0) list.Add(line.Trim());
        return list;
    }

    static void RemoveDomainNetDuplicates(string root, IProgress<DownloadProgress>? progress)
    {
        int removed = 0;
        foreach (var rel in DomainNetDuplicates())
        {
            var p = Path.Combine(root, rel.Replace('/', Path.DirectorySeparatorChar));
            if (File.Exists(p)) { File.Delete(p); removed++; }
        }
        progress?.Report(new("layout", "domain_net", removed, null, $"DomainNet: removed {removed} duplicate images (DomainBed's list)"));
    }

    static readonly string[] TerraLocations = ["38", "46", "100", "43"];
    static readonly string[] TerraCategories = ["bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel"];
    static readonly string[] TerraAnnotationFiles =
        ["cis_test_annotations.json", "cis_val_annotations.json", "train_annotations.json", "trans_test_annotations.json", "trans_val_annotations.json"];

    /// <summary>
    /// DomainBed's TerraIncognita: the Caltech Camera Traps images of locations 38, 46, 100 and 43, sorted into
    /// <c>location_&lt;loc&gt;/&lt;category&gt;/&lt;file&gt;</c> for the ten categories, from the five annotation files merged.
    /// An image with annotations of two categories goes into both folders, as in DomainBed.
    /// </summary>
    static void BuildTerraIncognita(string extract, string result, IProgress<DownloadProgress>? progress, List<string> warnings)
    {
        string images = Path.Combine(extract, "eccv_18_all_images_sm");
        string annotations = Path.Combine(extract, "eccv_18_annotation_files");
        if (!Directory.Exists(images)) throw new DatasetException($"TerraIncognita: the images archive has no folder eccv_18_all_images_sm/");
        var categories = new Dictionary<string, string>();
        var imageList = new List<(string Id, string Location, string File)>();
        var annotationsOf = new Dictionary<string, List<string>>();
        foreach (var f in TerraAnnotationFiles)
        {
            string path = Path.Combine(annotations, f);
            if (!File.Exists(path)) throw new DatasetException($"TerraIncognita: annotation file {f} is missing from eccv_18_annotations.tar.gz");
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = doc.RootElement;
            foreach (var c in root.GetProperty("categories").EnumerateArray())
                categories[Key(c.GetProperty("id"))] = c.GetProperty("name").GetString()!;
            foreach (var im in root.GetProperty("images").EnumerateArray())
                imageList.Add((Key(im.GetProperty("id")), Key(im.GetProperty("location")), im.GetProperty("file_name").GetString()!));
            foreach (var a in root.GetProperty("annotations").EnumerateArray())
            {
                string id = Key(a.GetProperty("image_id"));
                if (!annotationsOf.TryGetValue(id, out var list)) annotationsOf[id] = list = [];
                list.Add(Key(a.GetProperty("category_id")));
            }
        }
        var copies = new List<(string Src, string Dst)>();
        Directory.CreateDirectory(result);
        foreach (var (id, location, fileName) in imageList)
        {
            if (Array.IndexOf(TerraLocations, location) < 0) continue;
            string locFolder = Path.Combine(result, "location_" + location);
            Directory.CreateDirectory(locFolder);
            if (!annotationsOf.TryGetValue(id, out var cats)) continue;
            foreach (var catId in cats)
            {
                string category = categories.TryGetValue(catId, out var n) ? n : catId;
                if (Array.IndexOf(TerraCategories, category) < 0) continue;
                copies.Add((Path.Combine(images, fileName), Path.Combine(locFolder, category, fileName)));
            }
        }
        // move each source on its last use, copy it before
        var lastUse = new Dictionary<string, int>();
        for (int i = 0; i < copies.Count; i++) lastUse[copies[i].Src] = i;
        int missing = 0;
        var warned = new HashSet<string>();
        for (int i = 0; i < copies.Count; i++)
        {
            var (src, dst) = copies[i];
            if (!File.Exists(src))
            {
                missing++;
                if (warned.Add(src)) warnings.Add($"TerraIncognita: annotated image {Path.GetFileName(src)} is not in the images archive");
                continue;
            }
            Directory.CreateDirectory(Path.GetDirectoryName(dst)!);
            if (lastUse[src] == i) File.Move(src, dst, overwrite: true); else File.Copy(src, dst, overwrite: true);
            if (i % 5000 == 0) progress?.Report(new("layout", "terra_incognita", i, copies.Count));
        }
        progress?.Report(new("layout", "terra_incognita", copies.Count, copies.Count,
            $"TerraIncognita: {copies.Count - missing} images sorted into {TerraLocations.Length} locations" + (missing > 0 ? $", {missing} missing" : "")));

        static string Key(JsonElement e) => e.ValueKind == JsonValueKind.String ? e.GetString()! : e.GetRawText();
    }

    static void TryDelete(string path)
    {
        try { if (File.Exists(path)) File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    static void TryDeleteDirectory(string path)
    {
        try { if (Directory.Exists(path)) Directory.Delete(path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
