using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;

namespace SfMoe.Runs.Sweeps;

/// <summary>How one job of a local launch ended.</summary>
/// <param name="Job">The job.</param>
/// <param name="ExitCode">The process's exit code (0 for a job skipped because it was done).</param>
/// <param name="Resumed">Whether it was resumed from its training state.</param>
/// <param name="Seconds">Wall time.</param>
/// <param name="Error">The last error line of its output when it failed.</param>
public sealed record JobOutcome(SweepJob Job, int ExitCode, bool Resumed, double Seconds, string? Error)
{
    /// <summary>Exit code 0 (and the job's done file written).</summary>
    public bool Succeeded => ExitCode == 0;
}

/// <summary>What a local launch did.</summary>
/// <param name="Outcomes">The jobs that ran, in the order they ended.</param>
/// <param name="NotStarted">Jobs not started because the launch was cancelled.</param>
public sealed record LocalLaunchResult(IReadOnlyList<JobOutcome> Outcomes, IReadOnlyList<SweepJob> NotStarted)
{
    /// <summary>The jobs that failed.</summary>
    public IReadOnlyList<JobOutcome> Failed => Outcomes.Where(o => !o.Succeeded).ToArray();
}

/// <summary>Where a job's run starts: what a (re)launch does with the job's folder.</summary>
public enum JobStart
{
    /// <summary>The job is done: nothing to run.</summary>
    Skip,
    /// <summary>The folder holds a training state: the run resumes (<see cref="ITrainCommandLine.ResumeFlag"/>).</summary>
    Resume,
    /// <summary>Otherwise: the folder is emptied and the run starts from step 0.</summary>
    Fresh,
}

/// <summary>
/// The <c>local</c> (one job at a time) and <c>parallel</c> (N processes at once) launchers: each job is one
/// training process on this machine (<see cref="SweepManifest.CommandLine"/>), its stdout and stderr appended to
/// <c>job.out</c> in its folder. With <see cref="GpusPerJob"/>, each job gets GPUs of its own.
/// </summary>
public sealed class LocalLauncher
{
    /// <summary>Processes at once (1: the local launcher); with <see cref="GpusPerJob"/>, also at most one per group
    /// of GPUs.</summary>
    public int Parallel { get; init; } = 1;
    /// <summary>
    /// GPUs for each job (0: none, the default). The launcher finds this machine's GPUs (<c>SFMOE_GPU_COUNT</c>, else
    /// <c>CUDA_VISIBLE_DEVICES</c>, else <c>nvidia-smi -L</c>), splits them into floor(GPUs / GpusPerJob) disjoint
    /// groups and runs at most one job per group at once, with <c>CUDA_VISIBLE_DEVICES</c> set to its group, so each
    /// job's <c>cuda</c> is its own GPU. Too few GPUs is an error before any job starts. The jobs' device flag is the
    /// caller's (<see cref="LaunchArgs"/>).
    /// </summary>
    public int GpusPerJob { get; init; }
    /// <summary>The GPUs to hand out (null: found on this machine, see <see cref="GpusPerJob"/>).</summary>
    internal IReadOnlyList<string>? Gpus { get; init; }
    /// <summary>Arguments after every job's own (e.g. the threads each job may use).</summary>
    public IReadOnlyList<string> LaunchArgs { get; init; } = [];
    /// <summary>Receives a line as each job starts and ends.</summary>
    public Action<string>? Report { get; init; }

    /// <summary>Threads for each of <paramref name="parallel"/> jobs on <paramref name="cores"/> cores: cores / N, at least 1.</summary>
    public static int ThreadsPerJob(int cores, int parallel) => Math.Max(1, cores / Math.Max(1, parallel));

    /// <summary>
    /// Prepares a job's folder for a run and says how the run starts: done jobs are skipped, a folder with a training
    /// state is resumed, any other folder is emptied (a run killed before its first checkpoint, or a failed one).
    /// </summary>
    public static JobStart Prepare(SweepManifest sweep, SweepJob job)
    {
        var dir = sweep.JobDirectory(job);
        switch (sweep.StateOf(job))
        {
            case JobState.Done: return JobStart.Skip;
            case JobState.Incomplete when sweep.IsResumable(job): return JobStart.Resume;
            default:
                if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
                Directory.CreateDirectory(dir);
                return JobStart.Fresh;
        }
    }

    /// <summary>The full command of a job: the program, <see cref="ITrainCommandLine.Command"/>, then
    /// <see cref="SweepManifest.TrainArguments"/> (its arguments, the launch's, its folder, and the resume switch when
    /// resuming).</summary>
    public static IReadOnlyList<string> CommandOf(SweepManifest sweep, SweepJob job, IReadOnlyList<string> sfmoe, IReadOnlyList<string> launchArgs,
        bool resume) =>
        [.. sfmoe, .. sweep.CommandLine.Command, .. sweep.TrainArguments(job, launchArgs, resume)];

    /// <summary>
    /// Runs the jobs, at most <see cref="Parallel"/> at once, in the given order; cancelling stops starting new jobs
    /// and waits for the running ones (Ctrl-C reaches them too: they stop at their next step). Records the launch in
    /// sweep.json first. Holds the sweep's launch lock meanwhile.
    /// </summary>
    public LocalLaunchResult Run(SweepManifest sweep, IReadOnlyList<SweepJob> jobs, IReadOnlyList<string> sfmoe, CancellationToken ct = default)
    {
        if (Parallel < 1) throw new RunException($"LocalLauncher.Parallel must be >= 1, got {Parallel}");
        var groups = GpuGroups();
        int atOnce = groups is null ? Parallel : Math.Min(Parallel, groups.Count);
        using var _ = Sweep.LockForLocalLaunch(sweep.Directory);
        sweep.AddLaunch(new SweepLaunch(Parallel == 1 && groups is null ? "local" : "parallel", DateTimeOffset.UtcNow, jobs.Select(j => j.Id).ToArray(), sfmoe));
        sweep.Save();
        var outcomes = new List<JobOutcome>();
        var notStarted = new List<SweepJob>();
        // A job takes a free group of GPUs as it starts and gives it back as it ends; the semaphore never lets more
        // jobs run than there are groups, so a group is always free when a job starts.
        var freeGpus = new ConcurrentQueue<string>(groups ?? []);
        using var slots = new SemaphoreSlim(atOnce);
        var running = new List<Task>();
        int started = 0;
        foreach (var job in jobs)
        {
            try { slots.Wait(ct); }
            catch (OperationCanceledException) { notStarted.Add(job); continue; }
            int k = ++started;
            running.Add(Task.Run(() =>
            {
                string? gpus = null;
                try
                {
                    if (groups is not null && !freeGpus.TryDequeue(out gpus)) throw new InvalidOperationException("no free GPU group for a started job");
                    var o = RunOne(sweep, job, sfmoe, k, jobs.Count, gpus);
                    lock (outcomes) outcomes.Add(o);
                }
                finally
                {
                    if (gpus is not null) freeGpus.Enqueue(gpus);
                    slots.Release();
                }
            }, CancellationToken.None));
        }
        Task.WaitAll(running.ToArray());
        return new LocalLaunchResult(outcomes, notStarted);
    }

    /// <summary>The CUDA_VISIBLE_DEVICES value of each job slot (null without <see cref="GpusPerJob"/>); throws when
    /// there are too few GPUs.</summary>
    internal IReadOnlyList<string>? GpuGroups()
    {
        if (GpusPerJob == 0) return null;
        var inventory = Gpus is null ? GpuInventory.Detect() : new GpuInventory(Gpus, "LocalLauncher.Gpus");
        return inventory.Groups(GpusPerJob);
    }

    JobOutcome RunOne(SweepManifest sweep, SweepJob job, IReadOnlyList<string> sfmoe, int k, int n, string? gpus)
    {
        var tag = $"[{k}/{n}] {job.Id[..8]} {job.Describe()}{(gpus is null ? "" : $" (GPU {gpus})")}";
        var start = Prepare(sweep, job);
        if (start == JobStart.Skip)
        {
            Report?.Invoke($"{tag}: done already");
            return new JobOutcome(job, 0, false, 0, null);
        }
        var cmd = CommandOf(sweep, job, sfmoe, LaunchArgs, start == JobStart.Resume);
        var log = Path.Combine(sweep.JobDirectory(job), SweepManifest.JobLogName);
        File.AppendAllText(log, $"== sfmoe sweep {DateTime.UtcNow:yyyy-MM-ddTHH:mm:ssZ}: {(gpus is null ? "" : $"CUDA_VISIBLE_DEVICES={gpus} ")}{string.Join(" ", cmd.Select(SlurmScript.Quote))}\n");
        Report?.Invoke($"{tag}: {(start == JobStart.Resume ? "resuming" : "started")}");
        var sw = Stopwatch.StartNew();
        int code;
        // The shell appends both streams to the log (no pumping through this process); stdin is empty.
        var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false, RedirectStandardInput = true };
        if (gpus is not null) psi.Environment["CUDA_VISIBLE_DEVICES"] = gpus;
        foreach (var a in new[] { "-c", "log=$1; shift; exec \"$@\" >>\"$log\" 2>&1 </dev/null", "sh", log }) psi.ArgumentList.Add(a);
        foreach (var a in cmd) psi.ArgumentList.Add(a);
        try
        {
            using var p = Process.Start(psi) ?? throw new RunException("/bin/sh did not start");
            p.StandardInput.Close();
            p.WaitForExit();
            code = p.ExitCode;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            File.AppendAllText(log, $"sfmoe sweep: error: cannot start {cmd[0]}: {e.Message}\n");
            code = 127;
        }
        double secs = sw.Elapsed.TotalSeconds;
        bool done = sweep.StateOf(job) == JobState.Done;
        if (code == 0 && !done) code = 1;   // a run that exits 0 without its done file did not finish
        File.AppendAllText(log, $"== sfmoe sweep: exit code {code} after {secs.ToString("F1", CultureInfo.InvariantCulture)} s\n");
        string? error = code == 0 ? null : Sweep.LastErrorLine(log) ?? $"exit code {code}";
        Report?.Invoke(code == 0 ? $"{tag}: done in {secs:F1} s" : $"{tag}: FAILED (exit code {code}): {error} (log: {log})");
        return new JobOutcome(job, code, start == JobStart.Resume, secs, error);
    }
}

/// <summary>Submits a sweep's jobs as Slurm job arrays (see <see cref="SlurmScript"/>).</summary>
public static class SlurmLauncher
{
    /// <summary>The batch scripts for the jobs: one array per <see cref="SlurmOptions.MaxArraySize"/> jobs.</summary>
    public static IReadOnlyList<(IReadOnlyList<SweepJob> Jobs, string Script)> Scripts(SweepManifest sweep, IReadOnlyList<SweepJob> jobs,
        IReadOnlyList<string> sfmoe, IReadOnlyList<string> launchArgs, SlurmOptions o)
    {
        if (o.MaxArraySize < 1) throw new RunException($"SlurmOptions.MaxArraySize must be >= 1, got {o.MaxArraySize}");
        return jobs.Chunk(o.MaxArraySize)
            .Select(c => ((IReadOnlyList<SweepJob>)c, SlurmScript.Generate(sweep, c, sfmoe, launchArgs, o)))
            .ToArray();
    }

    /// <summary>
    /// Writes each script to the sweep's slurm/ folder, creates the jobs' folders (a queued job is "incomplete", as in
    /// DomainBed), submits the arrays with sbatch and records each in sweep.json. Returns the array job ids.
    /// </summary>
    public static IReadOnlyList<string> Submit(SweepManifest sweep, IReadOnlyList<SweepJob> jobs, IReadOnlyList<string> sfmoe,
        IReadOnlyList<string> launchArgs, SlurmOptions o, SlurmClient client, Action<string>? report = null)
    {
        var ids = new List<string>();
        var folder = Path.Combine(sweep.Directory, SweepManifest.SlurmFolder);
        Directory.CreateDirectory(folder);
        var stamp = DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture);
        int part = 0;
        foreach (var (chunk, script) in Scripts(sweep, jobs, sfmoe, launchArgs, o))
        {
            var name = $"launch-{stamp}{(part++ > 0 ? "-" + part.ToString(CultureInfo.InvariantCulture) : "")}.sbatch";
            var path = Path.Combine(folder, name);
            AtomicFile.WriteAllText(path, script);
            foreach (var j in chunk)
                if (sweep.StateOf(j) == JobState.NotLaunched) Directory.CreateDirectory(sweep.JobDirectory(j));
            var id = client.Submit(path);
            ids.Add(id);
            sweep.AddLaunch(new SweepLaunch("slurm", DateTimeOffset.UtcNow, chunk.Select(j => j.Id).ToArray(), sfmoe, id,
                $"{SweepManifest.SlurmFolder}/{name}"));
            sweep.Save();
            report?.Invoke($"submitted array job {id}: {chunk.Count} tasks (script {path}, logs {folder}/{id}_<task>.out)");
        }
        return ids;
    }
}
