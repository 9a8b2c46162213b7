using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;

namespace SfMoe.Data;

// The HTTP side of Downloader: one file through a .part with Range resumption and retries, then checksums.
public static partial class Downloader
{
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
}
