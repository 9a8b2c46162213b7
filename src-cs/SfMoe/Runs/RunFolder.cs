using System.Diagnostics;
using System.Net;
using System.Text;

namespace SfMoe.Runs;

/// <summary>
/// A run's output folder: its file names, the checks that decide whether a run may start or resume there, and an
/// exclusive lock held for the whole run, so that two processes never train or resume into one folder (they would
/// append to one results.jsonl and corrupt it). The lock is a file, <c>run.lock</c>, created exclusively and naming its
/// holder (host, process id, process start time). A lock whose holder is gone is taken over: on this host, when the
/// process no longer exists (or its id was reused by a process that started later); on another host (a cluster node
/// sharing the folder), when the holder has not refreshed the file for <see cref="StaleAfter"/>. The holder refreshes
/// it every minute.
/// </summary>
internal sealed class RunFolder : IDisposable
{
    /// <summary>How long another host's lock stays valid without a refresh.</summary>
    public static readonly TimeSpan StaleAfter = TimeSpan.FromMinutes(5);
    static readonly TimeSpan RefreshEvery = TimeSpan.FromMinutes(1);

    readonly string _lockPath;
    readonly string _holder;
    readonly Timer _refresh;
    bool _disposed;

    RunFolder(string dir, string lockPath, string holder)
    {
        Directory = dir; _lockPath = lockPath; _holder = holder;
        _refresh = new Timer(_ => Touch(), null, RefreshEvery, RefreshEvery);
    }

    /// <summary>The folder (absolute).</summary>
    public string Directory { get; }
    public string Results => Path.Combine(Directory, "results.jsonl");
    public string State => Path.Combine(Directory, "train_state.safetensors");
    public string Model => Path.Combine(Directory, "model.safetensors");
    public string Done => Path.Combine(Directory, "done");
    public string Log => Path.Combine(Directory, "log.txt");

    /// <summary>Checks that a new run may start in <paramref name="outputDir"/> (or that <paramref name="resume"/> has
    /// something to continue), creates the folder and takes its lock.</summary>
    /// <exception cref="RunException">The folder holds a run (and no resume was asked), holds nothing to resume, is
    /// done, or another process holds its lock.</exception>
    public static RunFolder Open(string outputDir, bool resume)
    {
        var dir = Path.GetFullPath(outputDir);
        System.IO.Directory.CreateDirectory(dir);
        var lockPath = Path.Combine(dir, "run.lock");
        var holder = Acquire(dir, lockPath);
        var folder = new RunFolder(dir, lockPath, holder);
        try
        {
            if (resume)
            {
                if (!File.Exists(folder.State))
                    throw new RunException($"TrainOptions.Resume: {folder.State} not found (nothing to resume; run without TrainOptions.Resume)");
                if (File.Exists(folder.Done)) throw new RunException($"{dir}: the run is already done");
            }
            else if (File.Exists(folder.Results) || File.Exists(folder.State))
                throw new RunException($"{dir} already holds a run; use TrainOptions.Resume to continue it or choose another TrainOptions.OutputDir");
            return folder;
        }
        catch
        {
            folder.Dispose();
            throw;
        }
    }

    /// <summary>This process as a lock holder: "host pid start-ticks".</summary>
    static string Me()
    {
        using var p = Process.GetCurrentProcess();
        return $"{Dns.GetHostName()} {Environment.ProcessId} {p.StartTime.ToUniversalTime().Ticks}";
    }

    static string Acquire(string dir, string lockPath)
    {
        var me = Me();
        for (int attempt = 0; attempt < 3; attempt++)
        {
            try
            {
                using var f = new FileStream(lockPath, FileMode.CreateNew, FileAccess.Write, FileShare.Read);
                f.Write(Encoding.UTF8.GetBytes(me + "\n"));
                f.Flush(flushToDisk: true);
                return me;
            }
            catch (IOException) when (File.Exists(lockPath))
            {
                string text;
                try { text = File.ReadAllText(lockPath).Trim(); }
                catch (IOException) { continue; }   // released while we looked: try again
                if (IsAlive(text, File.GetLastWriteTimeUtc(lockPath)))
                    throw new RunException($"{dir} is in use by another run ({Describe(text)}); wait for it to finish or choose another TrainOptions.OutputDir");
                // Stale: the holder is gone. Remove its lock and try to create ours (only one contender wins CreateNew).
                try { File.Delete(lockPath); } catch (IOException) { }
            }
        }
        throw new RunException($"{dir}: cannot take the run lock {lockPath}");
    }

    static string Describe(string holder)
    {
        var p = holder.Split(' ');
        return p.Length >= 2 ? $"process {p[1]} on {p[0]}" : $"holder '{holder}'";
    }

    /// <summary>Whether the holder written in a lock file still runs.</summary>
    internal static bool IsAlive(string holder, DateTime lastWriteUtc)
    {
        var p = holder.Split(' ');
        if (p.Length != 3 || !int.TryParse(p[1], out var pid) || !long.TryParse(p[2], out var ticks)) return false;
        if (!string.Equals(p[0], Dns.GetHostName(), StringComparison.OrdinalIgnoreCase))
            return DateTime.UtcNow - lastWriteUtc < StaleAfter;
        try
        {
            using var proc = Process.GetProcessById(pid);
            if (proc.HasExited) return false;
            // A reused id belongs to a process that started after the holder did.
            return Math.Abs(proc.StartTime.ToUniversalTime().Ticks - ticks) < TimeSpan.TicksPerSecond;
        }
        catch (ArgumentException) { return false; }          // no such process
        catch (InvalidOperationException) { return false; }  // it exited meanwhile
    }

    void Touch()
    {
        try { File.SetLastWriteTimeUtc(_lockPath, DateTime.UtcNow); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Releases the lock (only if it is still ours).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _refresh.Dispose();
        try
        {
            if (File.Exists(_lockPath) && File.ReadAllText(_lockPath).Trim() == _holder) File.Delete(_lockPath);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
