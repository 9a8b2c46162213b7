using System.Diagnostics;
using System.Net;
using SfMoe.Runs;

namespace SfMoe.Host.Tests.Runs;

/// <summary>One run per output folder: the lock, its holder in the error, and the take-over of stale locks.</summary>
public sealed class RunFolderTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "sfmoe-lock-" + Guid.NewGuid().ToString("N"));

    public void Dispose() { if (Directory.Exists(_dir)) Directory.Delete(_dir, true); }

    [Fact]
    public void ASecondRunIntoALockedFolderFailsAtOnceNamingTheFolderAndTheHolder()
    {
        using var first = RunFolder.Open(_dir, resume: false);
        var e = Assert.Throws<RunException>(() => RunFolder.Open(_dir, resume: false));
        Assert.Contains(Path.GetFullPath(_dir), e.Message);
        Assert.Contains($"is in use by another run (process {Environment.ProcessId} on {Dns.GetHostName()})", e.Message);
        // The trainer refuses too, before touching anything in the folder.
        var o = new TrainOptions { OutputDir = _dir, Steps = 1 };
        Assert.Throws<RunException>(() => Trainer.Run(o));
        Assert.False(File.Exists(Path.Combine(_dir, "results.jsonl")));
    }

    [Fact]
    public void TheLockIsReleasedWhenTheRunEnds()
    {
        using (RunFolder.Open(_dir, resume: false)) Assert.True(File.Exists(Path.Combine(_dir, "run.lock")));
        Assert.False(File.Exists(Path.Combine(_dir, "run.lock")));
        using var again = RunFolder.Open(_dir, resume: false);
    }

    [Fact]
    public void ALockOfAProcessThatIsGoneIsTakenOver()
    {
        Directory.CreateDirectory(_dir);
        using var p = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        p.WaitForExit();
        var started = DateTime.UtcNow.Ticks;
        File.WriteAllText(Path.Combine(_dir, "run.lock"), $"{Dns.GetHostName()} {p.Id} {started}\n");
        using var folder = RunFolder.Open(_dir, resume: false);
        Assert.StartsWith($"{Dns.GetHostName()} {Environment.ProcessId} ", File.ReadAllText(Path.Combine(_dir, "run.lock")));
    }

    [Fact]
    public void ALockWhoseProcessIdWasReusedIsTakenOver()
    {
        // Our own id, but a start time an hour earlier than ours: another process that had this id.
        Directory.CreateDirectory(_dir);
        var earlier = Process.GetCurrentProcess().StartTime.ToUniversalTime().AddHours(-1).Ticks;
        File.WriteAllText(Path.Combine(_dir, "run.lock"), $"{Dns.GetHostName()} {Environment.ProcessId} {earlier}\n");
        using var folder = RunFolder.Open(_dir, resume: false);
    }

    [Fact]
    public void AnotherHostsLockHoldsWhileItIsRefreshedAndIsTakenOverWhenStale()
    {
        Directory.CreateDirectory(_dir);
        var lockPath = Path.Combine(_dir, "run.lock");
        File.WriteAllText(lockPath, "node-17 4242 638000000000000000\n");
        var e = Assert.Throws<RunException>(() => RunFolder.Open(_dir, resume: false));
        Assert.Contains("process 4242 on node-17", e.Message);
        File.SetLastWriteTimeUtc(lockPath, DateTime.UtcNow - RunFolder.StaleAfter - TimeSpan.FromMinutes(1));
        using var folder = RunFolder.Open(_dir, resume: false);
    }
}
