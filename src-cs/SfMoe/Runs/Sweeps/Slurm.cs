using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace SfMoe.Runs.Sweeps;

/// <summary>What the <c>slurm</c> launcher asks Slurm for (every task of the array gets the same).</summary>
public sealed record SlurmOptions
{
    /// <summary>--partition (null: the cluster's default).</summary>
    public string? Partition { get; init; }
    /// <summary>--time, e.g. "02:00:00" or "1-00:00:00" (null: the partition's default).</summary>
    public string? Time { get; init; }
    /// <summary>--cpus-per-task (null: <see cref="DefaultCpusPerGpu"/> per GPU of <see cref="Gpus"/>, else 1); the
    /// job's threads and data workers follow it unless given.</summary>
    public int? CpusPerTask { get; init; }
    /// <summary>--gpus per task, e.g. "1" or "a100:1" (null: none).</summary>
    public string? Gpus { get; init; }

    /// <summary>CPUs a GPU task gets when <see cref="CpusPerTask"/> is not given: enough data workers to decode and
    /// augment a GPU's batches.</summary>
    internal const int DefaultCpusPerGpu = 8;

    /// <summary>The --cpus-per-task that goes into the script: <see cref="CpusPerTask"/>, else 8 per GPU, else 1.</summary>
    internal int EffectiveCpusPerTask =>
        CpusPerTask ?? (Gpus is null ? 1 : DefaultCpusPerGpu * GpuCount(Gpus));

    /// <summary>The GPUs of a --gpus value: "2" and "a100:2" are 2; "a100" is 1.</summary>
    internal static int GpuCount(string gpus)
    {
        var last = gpus.Split(':').Last();
        return int.TryParse(last, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0 ? n : 1;
    }
    /// <summary>--mem, e.g. "8G" (null: the cluster's default).</summary>
    public string? Mem { get; init; }
    /// <summary>At most this many tasks of the array at once (the %N of --array; null: no limit).</summary>
    public int? MaxConcurrent { get; init; }
    /// <summary>--job-name (null: "sfmoe-" + the sweep folder's name).</summary>
    public string? JobName { get; init; }
    /// <summary>More #SBATCH lines, with or without the "#SBATCH " prefix ("--account=abc", "--qos=high").</summary>
    public IReadOnlyList<string> ExtraLines { get; init; } = [];
    /// <summary>Largest array (tasks per sbatch); more jobs are submitted as several arrays (Slurm's MaxArraySize
    /// defaults to 1001, indices 0..1000).</summary>
    public int MaxArraySize { get; init; } = 1000;
    /// <summary>What wrote the script, for its header comment (null: SfMoe's Slurm launcher).</summary>
    public string? WrittenBy { get; init; }
}

/// <summary>The scheduler's view of one array task.</summary>
/// <param name="ArrayJobId">The array's job id.</param>
/// <param name="TaskId">The task index.</param>
/// <param name="State">Slurm's state: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, ...</param>
/// <param name="Reason">squeue's reason (e.g. Resources, NonZeroExitCode), or sacct's exit code "1:0"; may be empty.</param>
/// <param name="Source">squeue or sacct.</param>
public sealed record SlurmTaskState(string ArrayJobId, int TaskId, string State, string Reason, string Source)
{
    static readonly HashSet<string> ActiveStates = new(StringComparer.Ordinal)
    {
        "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
        "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
    };

    /// <summary>Whether the task is queued or running (it will still change its job's files).</summary>
    public bool Active => ActiveStates.Contains(State);

    /// <summary>"RUNNING (12_3)", "FAILED NonZeroExitCode (12_1)".</summary>
    public override string ToString() =>
        $"{State}{(Reason is "" or "None" ? "" : " " + Reason)} ({ArrayJobId}_{TaskId})";
}

/// <summary>The result of asking Slurm about some array jobs.</summary>
/// <param name="Tasks">By (array job id, task id).</param>
/// <param name="Notes">What could not be asked (e.g. "sacct: Slurm accounting storage is disabled").</param>
/// <param name="QueueAvailable">Whether squeue answered (if not, nothing is known about queued tasks).</param>
public sealed record SlurmQuery(IReadOnlyDictionary<(string ArrayJobId, int TaskId), SlurmTaskState> Tasks, IReadOnlyList<string> Notes,
    bool QueueAvailable);

/// <summary>
/// The <c>slurm</c> launcher: one job array per launch, through <c>sbatch</c>, with a generated batch script that maps
/// SLURM_ARRAY_TASK_ID to one job's training command; <c>squeue</c> (and <c>sacct</c> where accounting
/// works) for the tasks' states.
/// </summary>
public sealed class SlurmClient
{
    /// <summary>The sbatch command (default "sbatch"; a path, or a fake in tests).</summary>
    public string Sbatch { get; init; } = "sbatch";
    /// <summary>The squeue command.</summary>
    public string Squeue { get; init; } = "squeue";
    /// <summary>The sacct command.</summary>
    public string Sacct { get; init; } = "sacct";

    /// <summary>Submits a batch script; returns the job id (<c>sbatch --parsable</c>). Throws <see cref="SfMoeException"/>
    /// with sbatch's message when it fails.</summary>
    public string Submit(string scriptPath)
    {
        var (code, stdout, stderr) = RunTool(Sbatch, ["--parsable", scriptPath], TimeSpan.FromMinutes(2));
        if (code != 0) throw new RunException($"sbatch failed (exit code {code}): {FirstLine(stderr, stdout)}");
        var id = stdout.Trim().Split('\n').Last().Split(';')[0].Trim();
        if (!Regex.IsMatch(id, @"^\d+$")) throw new RunException($"sbatch printed no job id: {stdout.Trim()}");
        return id;
    }

    /// <summary>The states of the tasks of the given array jobs: squeue first (queued, running and recently finished
    /// tasks), then sacct for the rest, when accounting works. Never throws for an unavailable tool: see
    /// <see cref="SlurmQuery.Notes"/>.</summary>
    public SlurmQuery Query(IReadOnlyCollection<string> arrayJobIds)
    {
        var tasks = new Dictionary<(string, int), SlurmTaskState>();
        var notes = new List<string>();
        if (arrayJobIds.Count == 0) return new(tasks, notes, true);
        var ids = string.Join(",", arrayJobIds);
        bool queueOk = true;
        try
        {
            var (code, stdout, stderr) = RunTool(Squeue, ["--noheader", "--array", "--states=all", "--jobs=" + ids, "--format=%F|%K|%T|%r"], TimeSpan.FromSeconds(60));
            if (code == 0) foreach (var t in ParseSqueue(stdout)) tasks[(t.ArrayJobId, t.TaskId)] = t;
            // squeue fails when none of the ids is known any more (finished jobs leave its memory after MinJobAge).
            else if (!(stderr + stdout).Contains("Invalid job id", StringComparison.OrdinalIgnoreCase))
            {
                queueOk = false;
                notes.Add($"squeue failed (exit code {code}): {FirstLine(stderr, stdout)}");
            }
        }
        catch (SfMoeException e) { queueOk = false; notes.Add(e.Message); }
        try
        {
            var (code, stdout, stderr) = RunTool(Sacct, ["--noheader", "--parsable2", "--allocations", "--jobs=" + ids, "--format=JobID,State,ExitCode"], TimeSpan.FromSeconds(60));
            if (code == 0)
            {
                foreach (var t in ParseSacct(stdout))
                    tasks.TryAdd((t.ArrayJobId, t.TaskId), t);
            }
            else notes.Add($"sacct: {FirstLine(stderr, stdout)} (states of finished tasks come from squeue while it remembers them)");
        }
        catch (SfMoeException e) { notes.Add(e.Message); }
        return new(tasks, notes, queueOk);
    }

    /// <summary>Parses <c>squeue --noheader --array --format=%F|%K|%T|%r</c> (array job id, task id, state, reason).</summary>
    public static IReadOnlyList<SlurmTaskState> ParseSqueue(string text)
    {
        var list = new List<SlurmTaskState>();
        foreach (var raw in text.Split('\n'))
        {
            var p = raw.Trim().Split('|');
            if (p.Length < 3 || !int.TryParse(p[1], NumberStyles.None, CultureInfo.InvariantCulture, out int task)) continue;
            list.Add(new SlurmTaskState(p[0], task, p[2], p.Length > 3 ? p[3] : "", "squeue"));
        }
        return list;
    }

    /// <summary>Parses <c>sacct --noheader --parsable2 --allocations --format=JobID,State,ExitCode</c>: "12_3|FAILED|1:0",
    /// "12_4|CANCELLED by 0|0:15"; rows of pending, unexpanded tasks ("12_[5-9]") are skipped.</summary>
    public static IReadOnlyList<SlurmTaskState> ParseSacct(string text)
    {
        var list = new List<SlurmTaskState>();
        foreach (var raw in text.Split('\n'))
        {
            var p = raw.Trim().Split('|');
            if (p.Length < 2) continue;
            var m = Regex.Match(p[0], @"^(\d+)_(\d+)$");
            if (!m.Success) continue;
            var state = p[1].Split(' ')[0];
            list.Add(new SlurmTaskState(m.Groups[1].Value, int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture), state,
                p.Length > 2 && p[2] != "0:0" ? "exit " + p[2] : "", "sacct"));
        }
        return list;
    }

    static string FirstLine(string a, string b)
    {
        var s = (a.Trim().Length > 0 ? a : b).Trim();
        return s.Length == 0 ? "(no output)" : s.Split('\n')[0].Trim();
    }

    static (int Code, string Stdout, string Stderr) RunTool(string tool, IEnumerable<string> args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(tool)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        Process p;
        try { p = Process.Start(psi) ?? throw new RunException($"{tool} did not start"); }
        catch (System.ComponentModel.Win32Exception e) { throw new RunException($"{tool}: cannot run it ({e.Message}); is Slurm installed and on PATH?"); }
        using (p)
        {
            p.StandardInput.Close();
            var o = p.StandardOutput.ReadToEndAsync();
            var e = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(timeout))
            {
                try { p.Kill(true); } catch (InvalidOperationException) { }
                throw new RunException($"{tool} did not answer within {timeout.TotalSeconds:F0} s");
            }
            return (p.ExitCode, o.Result, e.Result);
        }
    }
}

/// <summary>Batch scripts of the <c>slurm</c> launcher.</summary>
internal static class SlurmScript
{
    static readonly Regex SafeWord = new(@"^[A-Za-z0-9_./:=@%+,-]+$", RegexOptions.CultureInvariant);

    /// <summary>A word for bash: as is when it only holds safe characters, else in single quotes.</summary>
    public static string Quote(string s) => s.Length > 0 && SafeWord.IsMatch(s) ? s : "'" + s.Replace("'", "'\\''") + "'";

    /// <summary>
    /// The batch script for one array: task i runs <paramref name="jobs"/>[i]. The script's <c>run_job</c> skips a
    /// job that is done, resumes one whose folder holds a training state (<see cref="ITrainCommandLine.ResumeFlag"/>),
    /// and otherwise empties the folder and starts the run. <paramref name="sfmoe"/> is the command that runs sfmoe
    /// (e.g. ["/usr/bin/dotnet", "/opt/sfmoe/SfMoe.Cli.dll"]); <paramref name="launchArgs"/> go to every job after its
    /// own arguments (e.g. its threads). The words come from the sweep's <see cref="SweepManifest.CommandLine"/>.
    /// </summary>
    public static string Generate(SweepManifest sweep, IReadOnlyList<SweepJob> jobs, IReadOnlyList<string> sfmoe,
        IReadOnlyList<string> launchArgs, SlurmOptions o)
    {
        if (jobs.Count == 0) throw new ArgumentException("no jobs", nameof(jobs));
        if (sweep.Directory.Any(char.IsWhiteSpace))
            throw new RunException($"the sweep folder {sweep.Directory} holds white space, which #SBATCH lines cannot: use another SweepManifest.Directory");
        var cl = sweep.CommandLine;
        var command = string.Join(" ", cl.Command.Select(Quote));
        var sb = new StringBuilder();
        void L(string s = "") => sb.Append(s).Append('\n');
        L("#!/bin/bash");
        L($"#SBATCH --job-name={Clean(o.JobName ?? "sfmoe-" + System.IO.Path.GetFileName(sweep.Directory))}");
        L($"#SBATCH --array=0-{jobs.Count - 1}{(o.MaxConcurrent is int m ? "%" + m.ToString(CultureInfo.InvariantCulture) : "")}");
        L($"#SBATCH --output={sweep.Directory}/{SweepManifest.SlurmFolder}/%A_%a.out");
        if (o.CpusPerTask is < 1) throw new RunException($"SlurmOptions.CpusPerTask must be >= 1, got {o.CpusPerTask}");
        L($"#SBATCH --cpus-per-task={o.EffectiveCpusPerTask.ToString(CultureInfo.InvariantCulture)}");
        if (o.Partition is not null) L($"#SBATCH --partition={Clean(o.Partition)}");
        if (o.Time is not null) L($"#SBATCH --time={Clean(o.Time)}");
        if (o.Gpus is not null) L($"#SBATCH --gpus={Clean(o.Gpus)}");
        if (o.Mem is not null) L($"#SBATCH --mem={Clean(o.Mem)}");
        foreach (var line in o.ExtraLines)
        {
            var t = line.Trim();
            if (t.Contains('\n')) throw new RunException("an extra #SBATCH line holds a line break");
            L(t.StartsWith("#SBATCH", StringComparison.Ordinal) ? t : "#SBATCH " + t);
        }
        L($"# Written by {o.WrittenBy ?? "SfMoe's Slurm launcher"} for the sweep in {sweep.Directory} ({SweepManifest.FileName}).");
        L($"# Task i runs job i below: `sfmoe {command}` into the job's folder. A job that is done is skipped, one whose folder");
        L($"# holds a training state resumes ({cl.ResumeFlag}), any other starts in an emptied folder.");
        L("set -u");
        L($"sweep={Quote(sweep.Directory)}");
        L($"sfmoe=({string.Join(" ", sfmoe.Select(Quote))})");
        L($"launch_args=({string.Join(" ", launchArgs.Select(Quote))})");
        L("run_job() {");
        L("  local id=$1; shift");
        L("  local dir=\"$sweep/$id\" resume=()");
        L("  echo \"sfmoe sweep: task ${SLURM_ARRAY_TASK_ID} of array ${SLURM_ARRAY_JOB_ID:-?} on $(hostname -s): job $id\"");
        L("  if [ -e \"$dir/done\" ]; then echo \"sfmoe sweep: job $id is done already\"; exit 0; fi");
        L("  if [ -e \"$dir/train_state.safetensors\" ]; then");
        L($"    resume=({Quote(cl.ResumeFlag)}); echo \"sfmoe sweep: resuming job $id from its training state\"");
        L("  else");
        L("    rm -rf \"$dir\" && mkdir -p \"$dir\" || exit 1");
        L("  fi");
        L($"  \"${{sfmoe[@]}}\" {command} \"$@\" \"${{launch_args[@]}}\" {Quote(cl.OutputDirFlag)} \"$dir\" \"${{resume[@]}}\"");
        L("  local rc=$?");
        L("  echo \"sfmoe sweep: job $id exit code $rc\"");
        L("  exit $rc");
        L("}");
        L("case \"${SLURM_ARRAY_TASK_ID:?not run as a Slurm array task}\" in");
        for (int i = 0; i < jobs.Count; i++)
            L($"  {i}) run_job {jobs[i].Id} {string.Join(" ", cl.JobArguments(jobs[i]).Select(Quote))} ;;");
        L("  *) echo \"sfmoe sweep: no job for task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;");
        L("esac");
        return sb.ToString();
    }

    static string Clean(string v) =>
        v.Any(c => char.IsWhiteSpace(c) || c == '#') ? throw new RunException($"'{v}' cannot go into an #SBATCH line (white space or #)") : v;
}
