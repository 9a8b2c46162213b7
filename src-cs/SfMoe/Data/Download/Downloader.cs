using System.Net;

namespace SfMoe.Data;

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
public static partial class Downloader
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

    static void TryDelete(string path)
    {
        try { if (File.Exists(path)) File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    static void TryDeleteDirectory(string path)
    {
        try { if (Directory.Exists(path)) Directory.Delete(path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
