using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SfMoe.Runs.Sweeps;

/// <summary>A job's state, from its files only (DomainBed's three states).</summary>
public enum JobState
{
    /// <summary>No folder.</summary>
    NotLaunched,
    /// <summary>A folder without a <c>done</c> file: queued, running, killed or failed.</summary>
    Incomplete,
    /// <summary>A <c>done</c> file: the run finished.</summary>
    Done,
}

/// <summary>One launch of (some of) a sweep's jobs, as recorded in sweep.json.</summary>
/// <param name="Launcher">local, parallel or slurm.</param>
/// <param name="Time">When it was launched (UTC).</param>
/// <param name="Jobs">Job ids; for slurm, task i of the array runs Jobs[i].</param>
/// <param name="Command">The sfmoe command the jobs ran (executable and leading arguments).</param>
/// <param name="SlurmJobId">The array's job id (slurm).</param>
/// <param name="Script">The batch script, relative to the sweep folder (slurm).</param>
public sealed record SweepLaunch(string Launcher, DateTimeOffset Time, IReadOnlyList<string> Jobs, IReadOnlyList<string> Command,
    string? SlurmJobId = null, string? Script = null)
{
    /// <summary>The per-task log of job <paramref name="jobId"/> in a slurm launch, relative to the sweep folder.</summary>
    public string? SlurmLog(string jobId)
    {
        if (SlurmJobId is null) return null;
        int k = Jobs.ToList().IndexOf(jobId);
        return k < 0 ? null : $"{SweepManifest.SlurmFolder}/{SlurmJobId}_{k}.out";
    }

    internal JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["launcher"] = Launcher,
            ["time"] = Time.UtcDateTime.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
            ["command"] = new JsonArray(Command.Select(c => (JsonNode)JsonValue.Create(c)!).ToArray()),
        };
        if (SlurmJobId is not null) o["slurm_job_id"] = SlurmJobId;
        if (Script is not null) o["script"] = Script;
        o["jobs"] = new JsonArray(Jobs.Select(j => (JsonNode)JsonValue.Create(j)!).ToArray());
        return o;
    }

    internal static SweepLaunch FromJson(JsonObject o) => new(
        o["launcher"]!.GetValue<string>(),
        DateTimeOffset.Parse(o["time"]!.GetValue<string>(), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal),
        o["jobs"]!.AsArray().Select(j => j!.GetValue<string>()).ToArray(),
        o["command"]?.AsArray().Select(j => j!.GetValue<string>()).ToArray() ?? [],
        o["slurm_job_id"]?.GetValue<string>(),
        o["script"]?.GetValue<string>());
}

/// <summary>
/// A sweep on disk: its folder holds <c>sweep.json</c> (the definition, every job's arguments and command, and the
/// launches) and one folder per job named by the job's id. Everything about a job's state comes from its folder:
/// <c>done</c> = done, a folder without it = incomplete, no folder = not launched. Its jobs' command lines are spelled
/// by the <see cref="ITrainCommandLine"/> it is opened with.
/// </summary>
public sealed class SweepManifest
{
    /// <summary>"sweep.json".</summary>
    public const string FileName = "sweep.json";
    /// <summary>Folder (under the sweep's) of batch scripts and per-task Slurm logs.</summary>
    public const string SlurmFolder = "slurm";
    /// <summary>The output of a job run by the local and parallel launchers, in the job's folder.</summary>
    public const string JobLogName = "job.out";
    /// <summary>Held while a local or parallel launch of the sweep runs.</summary>
    public const string LockName = ".launch.lock";
    const string Format = "sfmoe-sweep-1";

    readonly List<SweepLaunch> launches;
    readonly Dictionary<string, int> environmentCounts;

    SweepManifest(string directory, SweepDefinition definition, ITrainCommandLine commandLine, Dictionary<string, int> environmentCounts,
        List<SweepLaunch> launches)
    {
        Directory = directory; Definition = definition; CommandLine = commandLine; this.environmentCounts = environmentCounts; this.launches = launches;
        Jobs = definition.Expand(d => environmentCounts[d]);
    }

    /// <summary>Full path of the sweep's folder.</summary>
    public string Directory { get; }
    /// <summary>What the sweep runs.</summary>
    public SweepDefinition Definition { get; }
    /// <summary>How a job's training run is spelled on the command line.</summary>
    public ITrainCommandLine CommandLine { get; }
    /// <summary>Every job, in DomainBed's order.</summary>
    public IReadOnlyList<SweepJob> Jobs { get; }
    /// <summary>Launches so far, oldest first.</summary>
    public IReadOnlyList<SweepLaunch> Launches => launches;
    /// <summary>Path of sweep.json.</summary>
    public string Path => System.IO.Path.Combine(Directory, FileName);

    /// <summary>The folder of a job.</summary>
    public string JobDirectory(SweepJob job) => System.IO.Path.Combine(Directory, job.Id);

    /// <summary>The number of environments of each dataset of the definition (stored, so that the jobs can be listed
    /// where the data is not).</summary>
    public IReadOnlyDictionary<string, int> EnvironmentCounts => environmentCounts;

    /// <summary>A new manifest (not yet saved) for <paramref name="definition"/>'s jobs in <paramref name="directory"/>;
    /// <paramref name="environmentCount"/> gives a dataset's number of environments (default:
    /// <see cref="SweepDefinition.EnvironmentCount"/>).</summary>
    public static SweepManifest Create(string directory, SweepDefinition definition, ITrainCommandLine commandLine,
        Func<string, int>? environmentCount = null)
    {
        environmentCount ??= d => SweepDefinition.EnvironmentCount(d, definition.DataDir);
        var counts = definition.Datasets.Distinct().ToDictionary(d => d, d => environmentCount(d));
        return new(System.IO.Path.GetFullPath(directory), definition, commandLine, counts, []);
    }

    /// <summary>Whether <paramref name="directory"/> holds a sweep.json.</summary>
    public static bool Exists(string directory) => File.Exists(System.IO.Path.Combine(directory, FileName));

    /// <summary>Reads DIR/sweep.json; the jobs are expanded again from the definition and must match the stored ones.</summary>
    public static SweepManifest Load(string directory, ITrainCommandLine commandLine)
    {
        directory = System.IO.Path.GetFullPath(directory);
        var path = System.IO.Path.Combine(directory, FileName);
        if (!File.Exists(path)) throw new RunException($"{directory} holds no {FileName}: not a sweep folder (create one with SweepManifest.Create)");
        JsonObject root;
        try { root = JsonNode.Parse(File.ReadAllText(path))?.AsObject() ?? throw new RunException($"{path}: empty"); }
        catch (JsonException e) { throw new RunException($"{path}: not valid JSON ({e.Message})"); }
        if (root["format"]?.GetValue<string>() != Format) throw new RunException($"{path}: not an SfMoe sweep manifest ({Format})");
        var def = SweepDefinition.FromJson(root["definition"]?.AsObject() ?? throw new RunException($"{path}: no definition"));
        var stored = root["jobs"]?.AsArray().Select(j => j!["id"]!.GetValue<string>()).ToArray() ?? [];
        var counts = (root["environments"] as JsonObject)?.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>()) ?? [];
        foreach (var d in def.Datasets)
            if (!counts.ContainsKey(d)) throw new RunException($"{path}: no environment count for dataset {d}");
        var launches = root["launches"]?.AsArray().Select(l => SweepLaunch.FromJson(l!.AsObject())).ToList() ?? [];
        var m = new SweepManifest(directory, def, commandLine, counts, launches);
        // Re-expanding the definition must give the stored jobs, or the code that names jobs changed under the sweep.
        if (!stored.SequenceEqual(m.Jobs.Select(j => j.Id)))
            throw new RunException($"{path}: its jobs differ from those its definition gives now (was it written by another version of sfmoe?)");
        return m;
    }

    /// <summary>Records a launch (call <see cref="Save"/> after).</summary>
    public void AddLaunch(SweepLaunch launch) => launches.Add(launch);

    /// <summary>Writes sweep.json (to a temporary file, then renamed into place).</summary>
    public void Save()
    {
        System.IO.Directory.CreateDirectory(Directory);
        var root = new JsonObject
        {
            ["format"] = Format,
            ["definition"] = Definition.ToJson(),
            ["environments"] = new JsonObject(environmentCounts.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value)))),
            ["jobs"] = new JsonArray(Jobs.Select(j => (JsonNode)new JsonObject
            {
                ["id"] = j.Id,
                ["args"] = j.ArgsJson(),
                ["train"] = new JsonArray(TrainArguments(j, [], resume: false).Select(a => (JsonNode)JsonValue.Create(a)!).ToArray()),
            }).ToArray()),
            ["launches"] = new JsonArray(launches.Select(l => (JsonNode)l.ToJson()).ToArray()),
        };
        AtomicFile.WriteAllText(Path, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>A job's training arguments (after <see cref="ITrainCommandLine.Command"/>): its own, then
    /// <paramref name="launchArgs"/>, its folder, and the resume switch when <paramref name="resume"/>.</summary>
    public IReadOnlyList<string> TrainArguments(SweepJob job, IReadOnlyList<string> launchArgs, bool resume) =>
        [.. CommandLine.JobArguments(job), .. launchArgs, CommandLine.OutputDirFlag, JobDirectory(job), .. (resume ? [CommandLine.ResumeFlag] : Array.Empty<string>())];

    /// <summary>The state of a job from its folder.</summary>
    public JobState StateOf(SweepJob job)
    {
        var dir = JobDirectory(job);
        if (File.Exists(System.IO.Path.Combine(dir, Records.DoneFileName))) return JobState.Done;
        return System.IO.Directory.Exists(dir) ? JobState.Incomplete : JobState.NotLaunched;
    }

    /// <summary>Whether a job's folder holds a training state, so that a relaunch resumes it.</summary>
    public bool IsResumable(SweepJob job) => File.Exists(System.IO.Path.Combine(JobDirectory(job), "train_state.safetensors"));

    /// <summary>The launch that last ran a job, or null.</summary>
    public SweepLaunch? LastLaunchOf(SweepJob job) => launches.LastOrDefault(l => l.Jobs.Contains(job.Id));

    /// <summary>The full path of the log of a job's last launch (Slurm's per-task log or the local job.out), or null.</summary>
    public string? LogOf(SweepJob job)
    {
        var l = LastLaunchOf(job);
        if (l?.SlurmLog(job.Id) is { } rel) return System.IO.Path.Combine(Directory, rel);
        var local = System.IO.Path.Combine(JobDirectory(job), JobLogName);
        return File.Exists(local) ? local : null;
    }
}
