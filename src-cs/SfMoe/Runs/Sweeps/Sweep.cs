using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace SfMoe.Runs.Sweeps;

/// <summary>One job's state: from its files, and from the scheduler when its last launch went through Slurm.</summary>
/// <param name="Job">The job.</param>
/// <param name="State">From the files: done, incomplete or not launched.</param>
/// <param name="Resumable">Whether the folder holds a training state (a relaunch resumes it).</param>
/// <param name="Records">Complete lines in results.jsonl (evaluations so far).</param>
/// <param name="LastStep">The last evaluated step, or null.</param>
/// <param name="Scheduler">Slurm's state of the job's task in its last launch, when known.</param>
/// <param name="Log">The job's output from its last launch (Slurm's per-task log or job.out), or null.</param>
/// <param name="LastError">The last error line of that log, for jobs that are not done.</param>
/// <param name="SlurmTask">"12_3": the array task of the job's last launch, when that was a Slurm one. Slurm keeps no
/// record of a task cancelled while it was queued, nor (without accounting) of tasks finished more than MinJobAge ago:
/// then <paramref name="Scheduler"/> is null.</param>
public sealed record JobStatus(SweepJob Job, JobState State, bool Resumable, int Records, long? LastStep, SlurmTaskState? Scheduler,
    string? Log, string? LastError, string? SlurmTask = null)
{
    /// <summary>Slurm's state in a few words: "RUNNING (12_3)", "no record of task 12_3", or null for jobs not launched
    /// through Slurm.</summary>
    public string? SchedulerText =>
        Scheduler is { } t ? t.ToString() : SlurmTask is { } id && State != JobState.NotLaunched ? $"no record of task {id}" : null;

    /// <summary>Whether the scheduler still has the job's task queued or running.</summary>
    public bool Active => Scheduler?.Active == true;

    /// <summary>"done", "incomplete", "not launched".</summary>
    public static string Name(JobState s) => s switch
    {
        JobState.Done => "done",
        JobState.Incomplete => "incomplete",
        _ => "not launched",
    };

    /// <summary>Steps trained at the last evaluation: "21/30 steps" (the last record is step 20), "21 steps", "-".</summary>
    public string Progress => LastStep is { } s ? $"{s + 1}{(Job.Steps is { } n ? "/" + n.ToString(CultureInfo.InvariantCulture) : "")} steps" : "-";
}

/// <summary>Every job's state and what the scheduler could not tell.</summary>
/// <param name="Sweep">The sweep.</param>
/// <param name="Jobs">Every job, in the sweep's order.</param>
/// <param name="Notes">What the scheduler could not tell (a failed squeue, sacct without accounting).</param>
/// <param name="LocalLaunchRunning">Whether a local or parallel launch of the sweep is running now.</param>
/// <param name="QueueError">Why squeue gave no answer, when the sweep has Slurm launches and it failed; else null.</param>
public sealed record SweepStatus(SweepManifest Sweep, IReadOnlyList<JobStatus> Jobs, IReadOnlyList<string> Notes, bool LocalLaunchRunning,
    string? QueueError = null)
{
    /// <summary>Jobs in a state.</summary>
    public int Count(JobState s) => Jobs.Count(j => j.State == s);

    /// <summary>DomainBed's line: "8 jobs: 5 done, 2 incomplete, 1 not launched."</summary>
    public string Summary =>
        $"{Jobs.Count} jobs: {Count(JobState.Done)} done, {Count(JobState.Incomplete)} incomplete, {Count(JobState.NotLaunched)} not launched.";

    /// <summary>Whether some job is still queued or running (in Slurm, or in a local launch of the sweep).</summary>
    public bool AnyActive => LocalLaunchRunning || Jobs.Any(j => j.Active);
}

/// <summary>Sweeps: status, what a (re)launch runs, delete-incomplete, waiting for the scheduler.</summary>
public static class Sweep
{
    /// <summary>
    /// The state of every job: from its folder, plus Slurm's state of its task when its last launch was a Slurm one
    /// (squeue, then sacct; without accounting sacct fails and <see cref="SweepStatus.Notes"/> says so).
    /// <paramref name="slurm"/> null: do not ask Slurm.
    /// </summary>
    public static SweepStatus Status(SweepManifest sweep, SlurmClient? slurm = null)
    {
        var notes = new List<string>();
        var lastLaunch = new Dictionary<string, SweepLaunch>();
        foreach (var l in sweep.Launches)
            foreach (var j in l.Jobs) lastLaunch[j] = l;
        var arrays = lastLaunch.Values.Where(l => l.SlurmJobId is not null).Select(l => l.SlurmJobId!).Distinct().ToArray();
        IReadOnlyDictionary<(string, int), SlurmTaskState> tasks = new Dictionary<(string, int), SlurmTaskState>();
        string? queueError = null;
        if (arrays.Length > 0 && slurm is not null)
        {
            var q = slurm.Query(arrays);
            tasks = q.Tasks;
            notes.AddRange(q.Notes);
            if (!q.QueueAvailable) queueError = q.Notes.FirstOrDefault() ?? "squeue failed";
        }
        var list = new List<JobStatus>();
        foreach (var job in sweep.Jobs)
        {
            var state = sweep.StateOf(job);
            SlurmTaskState? sched = null;
            string? taskId = null;
            if (lastLaunch.TryGetValue(job.Id, out var l) && l.SlurmJobId is { } aid)
            {
                int k = l.Jobs.ToList().IndexOf(job.Id);
                taskId = $"{aid}_{k}";
                tasks.TryGetValue((aid, k), out sched);
                // A job whose folder was deleted after its task ended (delete-incomplete) is not launched: the old
                // task's state does not describe it any more.
                if (state == JobState.NotLaunched && sched is { Active: false }) sched = null;
            }
            var (records, last) = ReadProgress(Path.Combine(sweep.JobDirectory(job), Records.ResultsFileName));
            var log = state == JobState.NotLaunched && sched is null ? null : sweep.LogOf(job);
            string? error = state != JobState.Done && log is not null ? LastErrorLine(log) : null;
            list.Add(new JobStatus(job, state, sweep.IsResumable(job), records, last, sched, log, error, taskId));
        }
        return new SweepStatus(sweep, list, notes, IsLocalLaunchRunning(sweep.Directory), queueError);
    }

    /// <summary>
    /// The jobs a (re)launch runs: every job that is not done and not queued or running in Slurm. Incomplete ones are
    /// relaunched: resumed from their training state when they have one, else started again in an emptied folder.
    /// Throws <see cref="SfMoeException"/> while a local launch of the sweep runs, or when the sweep has Slurm
    /// launches and squeue cannot tell which of their tasks still run.
    /// </summary>
    public static IReadOnlyList<SweepJob> JobsToLaunch(SweepStatus status)
    {
        if (status.LocalLaunchRunning)
            throw new RunException($"a local launch of this sweep is running ({Path.Combine(status.Sweep.Directory, SweepManifest.LockName)} is held): wait for it or stop it first");
        if (status.QueueError is { } q && status.Jobs.Any(j => j.State == JobState.Incomplete))
            throw new RunException($"cannot tell which Slurm tasks of this sweep still run ({q}); relaunching could run a job twice");
        return status.Jobs.Where(j => j.State != JobState.Done && !j.Active).Select(j => j.Job).ToArray();
    }

    /// <summary>The incomplete jobs that <see cref="DeleteIncomplete"/> removes: not done, with a folder, and not queued or
    /// running in Slurm.</summary>
    public static IReadOnlyList<JobStatus> IncompleteToDelete(SweepStatus status)
    {
        if (status.LocalLaunchRunning)
            throw new RunException("a local launch of this sweep is running: its jobs' folders are in use");
        if (status.QueueError is { } q)
            throw new RunException($"cannot tell which Slurm tasks of this sweep still run ({q}); deleting could pull a folder from under a running job");
        return status.Jobs.Where(j => j.State == JobState.Incomplete && !j.Active).ToArray();
    }

    /// <summary>Deletes the folders of the given jobs (DomainBed's delete_incomplete); returns how many were deleted.</summary>
    public static int DeleteIncomplete(SweepManifest sweep, IEnumerable<JobStatus> jobs)
    {
        int n = 0;
        foreach (var j in jobs)
        {
            var dir = sweep.JobDirectory(j.Job);
            if (File.Exists(Path.Combine(dir, Records.DoneFileName))) continue;   // finished meanwhile
            if (Directory.Exists(dir)) { Directory.Delete(dir, recursive: true); n++; }
        }
        return n;
    }

    /// <summary>Whether a local or parallel launch of the sweep in <paramref name="directory"/> holds its lock now.</summary>
    public static bool IsLocalLaunchRunning(string directory)
    {
        var path = Path.Combine(directory, SweepManifest.LockName);
        if (!File.Exists(path)) return false;
        try
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
            return false;
        }
        catch (IOException) { return true; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>Takes the lock of a local launch (held until disposed); throws <see cref="SfMoeException"/> when another
    /// launch holds it.</summary>
    public static IDisposable LockForLocalLaunch(string directory)
    {
        Directory.CreateDirectory(directory);
        var path = Path.Combine(directory, SweepManifest.LockName);
        try
        {
            var f = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            var pid = System.Text.Encoding.ASCII.GetBytes(Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
            f.SetLength(0);
            f.Write(pid);
            f.Flush();
            return f;
        }
        catch (IOException)
        {
            throw new RunException($"another launch of this sweep is running ({path} is held)");
        }
    }

    /// <summary>
    /// Polls until no job of the sweep is queued or running (Slurm tasks of its launches, or a local launch), or the
    /// timeout passes; returns the last status and whether it finished waiting. <paramref name="report"/> gets a
    /// line whenever the counts change.
    /// </summary>
    public static (SweepStatus Status, bool Finished) Wait(SweepManifest sweep, SlurmClient? slurm, TimeSpan? timeout, TimeSpan poll,
        Action<string>? report = null, CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        string last = "";
        while (true)
        {
            var s = Status(sweep, slurm);
            if (s.QueueError is { } q) throw new RunException("cannot wait for the Slurm tasks: " + q);
            var running = s.Jobs.Count(j => j.Scheduler?.State == "RUNNING");
            var pending = s.Jobs.Count(j => j.Active) - running;
            var line = $"{s.Summary} Slurm: {running} running, {pending} pending{(s.LocalLaunchRunning ? "; a local launch is running" : "")}";
            if (line != last) { report?.Invoke($"[{sw.Elapsed.TotalSeconds,5:F0} s] {line}"); last = line; }
            if (!s.AnyActive) return (s, true);
            if (timeout is { } t && sw.Elapsed >= t) return (s, false);
            ct.WaitHandle.WaitOne(poll);
            ct.ThrowIfCancellationRequested();
        }
    }

    /// <summary>Valid records (complete lines) in a results.jsonl and the last step, reading nothing else.</summary>
    static (int Records, long? LastStep) ReadProgress(string results)
    {
        if (!File.Exists(results)) return (0, null);
        string text;
        try { text = File.ReadAllText(results); }
        catch (IOException) { return (0, null); }
        int n = 0;
        long? last = null;
        var lines = text.Split('\n');
        for (int i = 0; i < lines.Length - 1; i++)   // the piece after the last newline is not a complete line
        {
            if (lines[i].Trim().Length == 0) continue;
            try
            {
                using var doc = JsonDocument.Parse(lines[i]);
                if (doc.RootElement.TryGetProperty("step", out var st) && st.TryGetInt64(out var step)) { n++; last = step; }
            }
            catch (JsonException) { }
        }
        return (n, last);
    }

    /// <summary>The last line of a log that reports an error ("sfmoe: error: ...", an unhandled exception, Slurm's
    /// "CANCELLED" / "TIME LIMIT" notices), trimmed to 300 characters; null when there is none.</summary>
    public static string? LastErrorLine(string logPath)
    {
        string[] lines;
        try { lines = File.ReadAllLines(logPath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        for (int i = lines.Length - 1; i >= 0; i--)
        {
            var l = lines[i].Trim();
            if (l.Contains("error:", StringComparison.OrdinalIgnoreCase) || l.StartsWith("Unhandled exception", StringComparison.Ordinal)
                || l.Contains("CANCELLED", StringComparison.Ordinal) || l.Contains("TIME LIMIT", StringComparison.Ordinal)
                || l.Contains("oom-kill", StringComparison.OrdinalIgnoreCase))
                return l.Length > 300 ? l[..300] + "..." : l;
        }
        return null;
    }
}
