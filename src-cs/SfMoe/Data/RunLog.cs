using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace SfMoe.Data;

/// <summary>
/// A run's log: info lines and warnings to the run's log file (timestamped) and to the caller's logger (warnings at
/// Warning level, the rest at Information). Library code never writes to the console. Thread-safe.
/// </summary>
internal sealed class RunLog : IDisposable
{
    readonly StreamWriter? _file;
    readonly ILogger? _logger;
    readonly object _lock = new();
    readonly ConcurrentDictionary<string, bool> _warnedOnce = new();
    int _warnings;

    /// <summary>Logs to <paramref name="path"/> (appending) when given, and to <paramref name="logger"/>.</summary>
    public RunLog(string? path, ILogger? logger)
    {
        _logger = logger;
        if (path is not null) _file = new StreamWriter(path, append: true) { AutoFlush = true };
    }

    /// <summary>Number of warnings so far.</summary>
    public int Warnings => _warnings;

    /// <summary>An informational line.</summary>
    public void Info(string message)
    {
        lock (_lock)
        {
            _file?.WriteLine($"{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ssZ} {message}");
            _logger?.LogInformation("{Message}", message);
        }
    }

    /// <summary>A warning (counted).</summary>
    public void Warn(string message)
    {
        Interlocked.Increment(ref _warnings);
        lock (_lock)
        {
            _file?.WriteLine($"{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ssZ} warning: {message}");
            _logger?.LogWarning("{Message}", message);
        }
    }

    /// <summary>A warning logged once per key (e.g. per bad file).</summary>
    public bool WarnOnce(string key, string message)
    {
        if (!_warnedOnce.TryAdd(key, true)) return false;
        Warn(message);
        return true;
    }

    /// <inheritdoc />
    public void Dispose() => _file?.Dispose();
}
