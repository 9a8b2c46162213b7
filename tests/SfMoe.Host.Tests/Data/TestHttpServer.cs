using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace SfMoe.Host.Tests.Data;

/// <summary>
/// A minimal HTTP/1.1 file server on 127.0.0.1 (random free port) for the downloader tests: one request per
/// connection, optional Range support, and faults on demand (close the connection part-way through a body).
/// </summary>
sealed class TestHttpServer : IDisposable
{
    readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    readonly CancellationTokenSource _stop = new();
    readonly ConcurrentDictionary<string, (byte[] Body, string ContentType)> _files = new();
    readonly Task _loop;

    public TestHttpServer()
    {
        _listener.Start();
        BaseUrl = $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";
        _loop = Task.Run(AcceptLoop);
    }

    /// <summary>e.g. http://127.0.0.1:41234 (no trailing slash).</summary>
    public string BaseUrl { get; }
    /// <summary>Whether Range requests get 206 answers (else the whole file, 200).</summary>
    public bool SupportsRange { get; set; } = true;
    /// <summary>The ETag sent with every file (null: none).</summary>
    public string? ETag { get; set; } = "\"v1\"";
    /// <summary>When set, the first request for each path sends the headers and only this many body bytes, then closes.</summary>
    public int? DropFirstResponseAfter { get; set; }
    /// <summary>Every request seen: path, Range header (or null), status sent.</summary>
    public ConcurrentQueue<(string Path, string? Range, int Status)> Requests { get; } = new();

    readonly ConcurrentDictionary<string, int> _served = new();

    public void Add(string path, byte[] body, string contentType = "application/octet-stream") =>
        _files["/" + path.TrimStart('/')] = (body, contentType);

    async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try { client = await _listener.AcceptTcpClientAsync(_stop.Token); }
            catch (OperationCanceledException) { return; }
            catch (ObjectDisposedException) { return; }
            catch (SocketException) { return; }
            _ = Task.Run(() => Serve(client));
        }
    }

    async Task Serve(TcpClient client)
    {
        using (client)
        {
            try
            {
                var stream = client.GetStream();
                var head = await ReadHead(stream);
                if (head is null) return;
                var lines = head.Split("\r\n");
                var parts = lines[0].Split(' ');
                string path = parts.Length > 1 ? parts[1] : "/";
                string? range = lines.Skip(1).Select(l => l.Split(':', 2)).Where(kv => kv.Length == 2 && kv[0].Trim().Equals("Range", StringComparison.OrdinalIgnoreCase))
                    .Select(kv => kv[1].Trim()).FirstOrDefault();
                string? ifRange = lines.Skip(1).Select(l => l.Split(':', 2)).Where(kv => kv.Length == 2 && kv[0].Trim().Equals("If-Range", StringComparison.OrdinalIgnoreCase))
                    .Select(kv => kv[1].Trim()).FirstOrDefault();
                if (!_files.TryGetValue(path, out var file))
                {
                    Requests.Enqueue((path, range, 404));
                    await Write(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", ReadOnlyMemory<byte>.Empty);
                    return;
                }
                var body = file.Body;
                long start = 0;
                int status = 200;
                bool rangeOk = SupportsRange && range is not null && range.StartsWith("bytes=") && (ifRange is null || ifRange == ETag);
                if (rangeOk)
                {
                    var spec = range!["bytes=".Length..].Split('-');
                    start = long.Parse(spec[0]);
                    if (start >= body.Length)
                    {
                        Requests.Enqueue((path, range, 416));
                        await Write(stream, $"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{body.Length}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", ReadOnlyMemory<byte>.Empty);
                        return;
                    }
                    status = 206;
                }
                var sb = new StringBuilder();
                sb.Append(status == 206 ? "HTTP/1.1 206 Partial Content\r\n" : "HTTP/1.1 200 OK\r\n");
                sb.Append($"Content-Type: {file.ContentType}\r\n");
                sb.Append($"Content-Length: {body.Length - start}\r\n");
                if (status == 206) sb.Append($"Content-Range: bytes {start}-{body.Length - 1}/{body.Length}\r\n");
                if (SupportsRange) sb.Append("Accept-Ranges: bytes\r\n");
                if (ETag is not null) sb.Append($"ETag: {ETag}\r\n");
                sb.Append("Connection: close\r\n\r\n");
                Requests.Enqueue((path, range, status));
                int n = _served.AddOrUpdate(path, 1, (_, c) => c + 1);
                var slice = body.AsMemory((int)start);
                if (n == 1 && DropFirstResponseAfter is int drop && drop < slice.Length)
                {
                    await Write(stream, sb.ToString(), slice[..drop]);
                    client.Client.LingerState = new LingerOption(true, 0);   // reset, as a dropped connection
                    return;
                }
                await Write(stream, sb.ToString(), slice);
            }
            catch (IOException) { }
            catch (SocketException) { }
        }
    }

    static async Task Write(NetworkStream s, string head, ReadOnlyMemory<byte> body)
    {
        await s.WriteAsync(Encoding.ASCII.GetBytes(head));
        if (body.Length > 0) await s.WriteAsync(body);
        await s.FlushAsync();
    }

    static async Task<string?> ReadHead(NetworkStream s)
    {
        var buf = new List<byte>();
        var one = new byte[1];
        while (buf.Count < 65536)
        {
            int n = await s.ReadAsync(one);
            if (n == 0) return null;
            buf.Add(one[0]);
            int c = buf.Count;
            if (c >= 4 && buf[c - 4] == '\r' && buf[c - 3] == '\n' && buf[c - 2] == '\r' && buf[c - 1] == '\n')
                return Encoding.ASCII.GetString(buf.ToArray(), 0, c - 4);
        }
        return null;
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
        try { _loop.Wait(2000); } catch (AggregateException) { }
        _stop.Dispose();
    }
}
