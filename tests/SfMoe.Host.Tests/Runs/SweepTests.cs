using System.Diagnostics;
using System.Text.Json.Nodes;
using SfMoe.Runs.Sweeps;

namespace SfMoe.Host.Tests.Runs;

/// <summary>Sweeps without training: job expansion, naming, manifests, states, launchers with a fake sfmoe, Slurm
/// scripts and the parsing of squeue/sacct.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class SweepTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sfmoe-sweep-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static readonly Func<string, int> FourEnvs = _ => 4;

    /// <summary>sfmoe's spelling of a job's command line (the sweep code takes it from the application).</summary>
    static readonly ITrainCommandLine Cl = SfMoe.Cli.SweepCommands.commandLine;

    static SweepDefinition Def(params string[] trainArgs) => new()
    {
        Datasets = ["Synthetic"], Algorithms = ["SFMoE"], TestEnvs = [0, 1], SingleTestEnvs = true, HparamsTo = 1, Trials = 2,
        TrainArgs = trainArgs,
    };

    // ---- expansion

    [Fact]
    public void TheJobCountIsDatasetsTimesAlgorithmsTimesTestEnvCombinationsTimesHparamsTimesTrials()
    {
        var d = new SweepDefinition
        {
            Datasets = ["Synthetic", "PACS", "Mine"], Algorithms = ["ERM", "SFMoE"], HparamsFrom = 1, HparamsTo = 4, Trials = 3,
        };
        var envs = new Dictionary<string, int> { ["Synthetic"] = 4, ["PACS"] = 4, ["Mine"] = 5 };
        var jobs = d.Expand(n => envs[n]);
        // leave-one-domain-out combinations: n singles + n(n-1)/2 pairs
        Assert.Equal(3 * 2 * (10 + 10 + 15) * 3, jobs.Count);
        Assert.Equal(jobs.Count, jobs.Select(j => j.Id).Distinct().Count());
        Assert.Equal(new[] { 1, 2, 3 }, jobs.Select(j => j.HparamsSeed).Distinct().Order());
        var single = (d with { SingleTestEnvs = true }).Expand(n => envs[n]);
        Assert.Equal(3 * 2 * (4 + 4 + 5) * 3, single.Count);
        var restricted = (d with { SingleTestEnvs = true, TestEnvs = [0, 1], Datasets = ["Synthetic"] }).Expand(FourEnvs);
        Assert.Equal(2 * 2 * 3 * 3, restricted.Count);
    }

    [Fact]
    public void TestEnvCombinationsAreDomainBedsAllTestEnvCombinations()
    {
        string S(IEnumerable<int[]> c) => string.Join(" ", c.Select(x => "[" + string.Join(",", x) + "]"));
        var all = new[] { 0, 1, 2, 3 };
        // DomainBed: for i in range(n): yield [i]; for j in range(i+1, n): yield [i, j]
        Assert.Equal("[0] [0,1] [0,2] [0,3] [1] [1,2] [1,3] [2] [2,3] [3]", S(SweepDefinition.TestEnvCombinations(4, all, single: false)));
        Assert.Equal("[0] [1] [2] [3]", S(SweepDefinition.TestEnvCombinations(4, all, single: true)));
        // Only env 1 held out: [1] and every pair holding 1 (what leave-one-domain-out selection for env 1 needs).
        Assert.Equal("[0,1] [1] [1,2] [1,3]", S(SweepDefinition.TestEnvCombinations(4, new[] { 1 }, single: false)));
    }

    [Fact]
    public void JobsComeInDomainBedsOrder()
    {
        var d = new SweepDefinition { Datasets = ["A", "B"], Algorithms = ["ERM", "SFMoE"], TestEnvs = [0, 2], SingleTestEnvs = true, HparamsTo = 2, Trials = 2 };
        var jobs = d.Expand(_ => 3);
        var expected = new List<string>();
        foreach (var t in new[] { 0, 1 })
            foreach (var ds in new[] { "A", "B" })
                foreach (var a in new[] { "ERM", "SFMoE" })
                    foreach (var e in new[] { 0, 2 })
                        foreach (var h in new[] { 0, 1 })
                            expected.Add($"{ds} {a} test_envs=[{e}] hparams_seed={h} trial_seed={t}");
        Assert.Equal(expected, jobs.Select(j => j.Describe()));
    }

    [Fact]
    public void InvalidDefinitionsAreClearErrors()
    {
        Assert.Contains("out of range", Assert.ThrowsAny<SfMoeException>(() => (Def() with { TestEnvs = [4] }).Expand(FourEnvs)).Message);
        Assert.Contains("unknown algorithm Foo", Assert.ThrowsAny<SfMoeException>(() => (Def() with { Algorithms = ["Foo"] }).Expand(FourEnvs)).Message);
        Assert.Contains("pairs of test envs need at least 3", Assert.ThrowsAny<SfMoeException>(() => (Def() with { SingleTestEnvs = false, TestEnvs = null }).Expand(_ => 2)).Message);
        Assert.Contains("are empty", Assert.ThrowsAny<SfMoeException>(() => (Def() with { HparamsFrom = 3, HparamsTo = 3 }).Expand(FourEnvs)).Message);
        Assert.Contains("trials", Assert.ThrowsAny<SfMoeException>(() => (Def() with { Trials = 0 }).Expand(FourEnvs)).Message);
        Assert.Contains("unknown dataset NoSuchSet", Assert.ThrowsAny<SfMoeException>(() => SweepDefinition.EnvironmentCount("NoSuchSet", _dir)).Message);
        Assert.Equal(4, SweepDefinition.EnvironmentCount("Synthetic", null));
        Assert.Equal(4, SweepDefinition.EnvironmentCount("office_home", null));
        foreach (var e in new[] { "a", "b", "c", ".hidden" }) Directory.CreateDirectory(Path.Combine(_dir, "Mine", e));
        Assert.Equal(3, SweepDefinition.EnvironmentCount("Mine", _dir));
    }

    // ---- naming

    [Fact]
    public void JobIdsAndSeedsEqualDomainBedsMd5OfTheSortedJsonArgs()
    {
        // Expected values from Python: seed = misc.seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed);
        // id = hashlib.md5(json.dumps(train_args, sort_keys=True).encode()).hexdigest().
        var a = SweepJob.Create("PACS", "ERM", [0], 0, 0, "/data/domainbed", []);
        Assert.Equal(94828300, a.Seed);
        Assert.Equal("8ae51382a7eb7c74ab77871d0b939377", a.Id);
        Assert.Equal("{\"algorithm\": \"ERM\", \"data_dir\": \"/data/domainbed\", \"dataset\": \"PACS\", \"hparams_seed\": 0, \"seed\": 94828300, \"test_envs\": [0], \"trial_seed\": 0}",
            PythonJson.Dumps(a.TrainArgs));
        var b = SweepJob.Create("PACS", "SFMoE", [1, 3], 7, 2, "/data/domainbed", SweepDefinition.ParseTrainArgs(["--steps", "5001", "--no-timings"]));
        Assert.Equal(1151479600, b.Seed);
        Assert.Equal("cdbfc2302c1c58da31f0212e89ae3dbc", b.Id);
        var c = SweepJob.Create("Synthetic", "GMoE", [2], 0, 1, null,
            SweepDefinition.ParseTrainArgs(["--model", "gmoe_test_patch8_32", "--pattern", "[S,F]x2", "--lr", "1e-4"]));
        Assert.Equal(533568847, c.Seed);
        Assert.Equal("8dc71e598946e7ee3a3e734eef44455d", c.Id);
        var d = SweepJob.Create("Ünïcode dir", "ERM", [0], 0, 0, "/d/é \"q\"", []);
        Assert.Equal(190266615, d.Seed);
        Assert.Equal("66d676183bba8421d8355ddfd1daa348", d.Id);
        // The order of the extra options does not matter; aliases of known datasets name the same job.
        Assert.Equal(b.Id, SweepJob.Create("pacs", "SFMoE", [1, 3], 7, 2, "/data/domainbed", SweepDefinition.ParseTrainArgs(["--no-timings", "--steps", "5001"])).Id);
    }

    [Fact]
    public void PythonJsonDumpsEscapesAsPython()
    {
        var o = new SortedDictionary<string, object>(StringComparer.Ordinal)
        {
            ["x"] = true, ["test_envs"] = new[] { 0, 2 }, ["dataset"] = "Ünï \"q\"\n\\ é\u007f", ["data_dir"] = "/d",
        };
        Assert.Equal("{\"data_dir\": \"/d\", \"dataset\": \"\\u00dcn\\u00ef \\\"q\\\"\\n\\\\ \\u00e9\\u007f\", \"test_envs\": [0, 2], \"x\": true}",
            PythonJson.Dumps(o));
    }

    [Fact]
    public void TheTrainCommandListsTheArgumentsInKeyOrder()
    {
        var j = SweepJob.Create("Synthetic", "SFMoE", [0, 2], 1, 0, "/data", SweepDefinition.ParseTrainArgs(["--steps", "30", "--quiet", "--model", "sfmoe_test_patch8_32"]));
        Assert.Equal(
            $"--algorithm SFMoE --data-dir /data --dataset Synthetic --hparams-seed 1 --model sfmoe_test_patch8_32 --quiet --seed {j.Seed} --steps 30 --test-env 0 --test-env 2 --trial-seed 0",
            string.Join(" ", Cl.JobArguments(j)));
        Assert.Equal(30L, j.Steps);
    }

    [Fact]
    public void ExtraTrainOptionsAreTypedAndChecked()
    {
        var p = SweepDefinition.ParseTrainArgs(["--steps", "50", "--lr", "0.001", "--no-timings", "--pattern", "[S,F]x2", "--batch-size", "-1"]);
        Assert.Equal(new object[] { 50L, "0.001", true, "[S,F]x2", -1L }, p.Select(kv => kv.Value));
        Assert.Equal(new[] { "steps", "lr", "no_timings", "pattern", "batch_size" }, p.Select(kv => kv.Key));
        // Options the sweep sets itself are refused by the command line that knows them (CliFlagTests, "sweep-set options").
        Assert.Contains("given twice", Assert.ThrowsAny<SfMoeException>(() => SweepDefinition.ParseTrainArgs(["--steps", "1", "--steps", "2"])).Message);
        Assert.Contains("train option expected, got 'oops'", Assert.ThrowsAny<SfMoeException>(() => SweepDefinition.ParseTrainArgs(["--steps", "1", "oops"])).Message);
    }

    // ---- manifest and states

    [Fact]
    public void TheManifestRoundTripsAndChecksItsJobs()
    {
        var m = SweepManifest.Create(_dir, Def("--steps", "30"), Cl, FourEnvs);
        m.AddLaunch(new SweepLaunch("slurm", DateTimeOffset.UtcNow, [m.Jobs[1].Id, m.Jobs[0].Id], ["/usr/bin/dotnet", "/x/SfMoe.Cli.dll"], "42", "slurm/a.sbatch"));
        m.Save();
        var back = SweepManifest.Load(_dir, Cl);
        Assert.True(back.Definition.SameAs(m.Definition));
        Assert.Equal(m.Jobs.Select(j => j.Id), back.Jobs.Select(j => j.Id));
        Assert.Equal(4, back.EnvironmentCounts["Synthetic"]);
        var l = Assert.Single(back.Launches);
        Assert.Equal("42", l.SlurmJobId);
        Assert.Equal("slurm/42_0.out", l.SlurmLog(m.Jobs[1].Id));
        Assert.Equal(Path.Combine(_dir, "slurm/42_1.out"), back.LogOf(m.Jobs[0]));
        // Each job's full train command is in the file, for people and scripts.
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "sweep.json")))!;
        var train = json["jobs"]![0]!["train"]!.AsArray().Select(x => x!.GetValue<string>()).ToArray();
        Assert.Equal([.. Cl.JobArguments(m.Jobs[0]), "--output-dir", m.JobDirectory(m.Jobs[0])], train);
        Assert.False(back.Definition.SameAs(Def("--steps", "31")));
        // A manifest whose jobs do not match its definition is refused.
        json["jobs"]![0]!["id"] = "0123456789abcdef0123456789abcdef";
        File.WriteAllText(Path.Combine(_dir, "sweep.json"), json.ToJsonString());
        Assert.Contains("its jobs differ", Assert.ThrowsAny<SfMoeException>(() => SweepManifest.Load(_dir, Cl)).Message);
    }

    [Fact]
    public void AJobsStateComesFromItsFiles()
    {
        var m = SweepManifest.Create(_dir, Def(), Cl, FourEnvs);
        var j = m.Jobs[0];
        var dir = m.JobDirectory(j);
        Assert.Equal(Path.Combine(_dir, j.Id), dir);
        Assert.Equal(JobState.NotLaunched, m.StateOf(j));
        Directory.CreateDirectory(dir);
        Assert.Equal(JobState.Incomplete, m.StateOf(j));
        Assert.False(m.IsResumable(j));
        File.WriteAllText(Path.Combine(dir, "train_state.safetensors"), "");
        Assert.True(m.IsResumable(j));
        File.WriteAllText(Path.Combine(dir, "done"), "done\n");
        Assert.Equal(JobState.Done, m.StateOf(j));

        var st = Sweep.Status(m);
        Assert.Equal("4 jobs: 1 done, 0 incomplete, 3 not launched.", st.Summary);
    }

    [Fact]
    public void StatusReadsProgressAndTheLastErrorOfTheLog()
    {
        var m = SweepManifest.Create(_dir, Def("--steps", "30"), Cl, FourEnvs);
        var j = m.Jobs[1];
        var dir = m.JobDirectory(j);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "results.jsonl"), "{\"step\": 0, \"x\": 1}\n{\"step\": 10, \"x\": 1}\n{\"step\": 20, \"x");
        File.WriteAllText(Path.Combine(dir, SweepManifest.JobLogName), "== sfmoe sweep ...\nstep 1\nsfmoe: error: the loss became NaN at step 12\n== sfmoe sweep: exit code 2 after 3.0 s\n");
        var s = Sweep.Status(m).Jobs[1];
        Assert.Equal(JobState.Incomplete, s.State);
        Assert.Equal(2, s.Records);
        Assert.Equal(10L, s.LastStep);
        Assert.Equal("11/30 steps", s.Progress);
        Assert.Equal("sfmoe: error: the loss became NaN at step 12", s.LastError);
        Assert.Equal(Path.Combine(dir, SweepManifest.JobLogName), s.Log);
    }

    [Fact]
    public void PreparingAJobSkipsDoneResumesCheckpointedAndEmptiesTheRest()
    {
        var m = SweepManifest.Create(_dir, Def(), Cl, FourEnvs);
        var (a, b) = (m.Jobs[0], m.Jobs[1]);
        Assert.Equal(JobStart.Fresh, LocalLauncher.Prepare(m, a));
        Assert.True(Directory.Exists(m.JobDirectory(a)));
        File.WriteAllText(Path.Combine(m.JobDirectory(a), "results.jsonl"), "");   // killed before its first checkpoint
        Assert.Equal(JobStart.Fresh, LocalLauncher.Prepare(m, a));
        Assert.Empty(Directory.GetFileSystemEntries(m.JobDirectory(a)));
        Directory.CreateDirectory(m.JobDirectory(b));
        File.WriteAllText(Path.Combine(m.JobDirectory(b), "train_state.safetensors"), "x");
        Assert.Equal(JobStart.Resume, LocalLauncher.Prepare(m, b));
        Assert.True(File.Exists(Path.Combine(m.JobDirectory(b), "train_state.safetensors")));
        var cmd = LocalLauncher.CommandOf(m, b, ["sfmoe"], ["--threads", "1"], resume: true);
        Assert.Equal(["sfmoe", "train", .. Cl.JobArguments(b), "--threads", "1", "--output-dir", m.JobDirectory(b), "--resume"], cmd);
        File.WriteAllText(Path.Combine(m.JobDirectory(b), "done"), "");
        Assert.Equal(JobStart.Skip, LocalLauncher.Prepare(m, b));
    }

    /// <summary>A command line spelled unlike sfmoe's, as DomainBed's train.py takes it.</summary>
    sealed class PythonTrainCommandLine : ITrainCommandLine
    {
        public IReadOnlyList<string> Command => ["-m", "domainbed.scripts.train"];
        public string OutputDirFlag => "--output_dir";
        public string ResumeFlag => "--restore";
        public IReadOnlyList<string> JobArguments(SweepJob job) =>
            job.TrainArgs.SelectMany(kv => kv.Value switch
            {
                int[] envs => ["--" + kv.Key, .. envs.Select(e => e.ToString(System.Globalization.CultureInfo.InvariantCulture))],
                bool b => b ? ["--" + kv.Key] : Array.Empty<string>(),
                var v => ["--" + kv.Key, Convert.ToString(v, System.Globalization.CultureInfo.InvariantCulture)!],
            }).ToArray();
    }

    [Fact]
    public void LaunchersScriptsAndManifestsSpellJobsOnlyWithTheApplicationsCommandLine()
    {
        var py = new PythonTrainCommandLine();
        var m = SweepManifest.Create(_dir, Def("--steps", "30"), py, FourEnvs);
        var j = m.Jobs[1];
        var args = py.JobArguments(j);
        Assert.Equal($"--algorithm SFMoE --dataset Synthetic --hparams_seed 0 --seed {j.Seed} --steps 30 --test_envs 1 --trial_seed 0", string.Join(" ", args));
        Assert.Equal(["python", "-m", "domainbed.scripts.train", .. args, "--x", "1", "--output_dir", m.JobDirectory(j), "--restore"],
            LocalLauncher.CommandOf(m, j, ["python"], ["--x", "1"], resume: true));
        var script = SlurmScript.Generate(m, m.Jobs, ["python"], [], new SlurmOptions());
        var lines = script.Split('\n');
        Assert.Contains("  \"${sfmoe[@]}\" -m domainbed.scripts.train \"$@\" \"${launch_args[@]}\" --output_dir \"$dir\" \"${resume[@]}\"", lines);
        Assert.Contains("    resume=(--restore); echo \"sfmoe sweep: resuming job $id from its training state\"", lines);
        Assert.Contains($"  1) run_job {j.Id} {string.Join(" ", args)} ;;", lines);
        Assert.StartsWith("# Written by SfMoe's Slurm launcher for the sweep in ", lines.Single(l => l.StartsWith("# Written")));
        foreach (var sfmoeWord in new[] { "--output-dir", "--resume", "--test-env", "--hparams-seed", "\" train " })
            Assert.DoesNotContain(sfmoeWord, script);
        m.Save();
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "sweep.json")))!;
        Assert.Equal([.. args, "--output_dir", m.JobDirectory(j)], json["jobs"]![1]!["train"]!.AsArray().Select(x => x!.GetValue<string>()));
    }

    [Fact]
    public void DeleteIncompleteRemovesOnlyIncompleteFolders()
    {
        var m = SweepManifest.Create(_dir, Def() with { Trials = 3 }, Cl, FourEnvs);   // 6 jobs
        Directory.CreateDirectory(m.JobDirectory(m.Jobs[0]));
        File.WriteAllText(Path.Combine(m.JobDirectory(m.Jobs[0]), "done"), "");
        Directory.CreateDirectory(m.JobDirectory(m.Jobs[1]));
        Directory.CreateDirectory(m.JobDirectory(m.Jobs[2]));
        File.WriteAllText(Path.Combine(m.JobDirectory(m.Jobs[2]), "results.jsonl"), "{\"step\": 0}\n");
        var doomed = Sweep.IncompleteToDelete(Sweep.Status(m));
        Assert.Equal(new[] { m.Jobs[1].Id, m.Jobs[2].Id }, doomed.Select(d => d.Job.Id));
        Assert.Equal(2, Sweep.DeleteIncomplete(m, doomed));
        Assert.Equal(new[] { JobState.Done, JobState.NotLaunched, JobState.NotLaunched, JobState.NotLaunched, JobState.NotLaunched, JobState.NotLaunched },
            m.Jobs.Select(m.StateOf));
    }

    // ---- the local and parallel launchers, with a fake sfmoe

    /// <summary>A stand-in for sfmoe: records concurrency, sleeps, fails for trial seed 1 when asked, else writes a
    /// results line and the done file.</summary>
    string FakeSfmoe(bool failTrial1)
    {
        var path = Path.Combine(_dir, "fake-sfmoe.sh");
        File.WriteAllText(path, $$"""
            #!/bin/bash
            out=""; trial=""
            args=("$@")
            for ((i=0; i<${#args[@]}; i++)); do
              case "${args[$i]}" in --output-dir) out=${args[$((i+1))]};; --trial-seed) trial=${args[$((i+1))]};; esac
            done
            echo "$@" >> {{_dir}}/calls.txt
            mkdir -p {{_dir}}/running && touch {{_dir}}/running/$$
            ls {{_dir}}/running | wc -l >> {{_dir}}/concurrency.txt
            sleep 0.5
            rm -f {{_dir}}/running/$$
            if [ "{{(failTrial1 ? "1" : "")}}" = "1" ] && [ "$trial" = 1 ]; then echo "sfmoe: error: boom in trial 1" >&2; exit 3; fi
            echo '{"step": 0}' >> "$out/results.jsonl"
            echo done > "$out/done"
            """.Replace("\r", ""));
        return path;
    }

    [Fact]
    public void TheParallelLauncherBoundsItsProcessesAndListsFailures()
    {
        var m = SweepManifest.Create(Path.Combine(_dir, "sweep"), Def() with { TestEnvs = [0, 1, 2, 3], Trials = 2 }, Cl, FourEnvs);   // 8 jobs
        m.Save();
        var lines = new List<string>();
        var launcher = new LocalLauncher { Parallel = 3, LaunchArgs = ["--threads", "1"], Report = l => { lock (lines) lines.Add(l); } };
        var r = launcher.Run(m, m.Jobs, ["/bin/bash", FakeSfmoe(failTrial1: true)]);
        Assert.Equal(8, r.Outcomes.Count);
        var failed = r.Failed;
        Assert.Equal(4, failed.Count);
        Assert.All(failed, f => Assert.Equal(1, f.Job.TrialSeed));
        Assert.All(failed, f => Assert.Equal(3, f.ExitCode));
        Assert.All(failed, f => Assert.Equal("sfmoe: error: boom in trial 1", f.Error));
        var max = File.ReadAllLines(Path.Combine(_dir, "concurrency.txt")).Select(int.Parse).Max();
        Assert.InRange(max, 2, 3);
        Assert.Contains(lines, l => l.Contains("FAILED (exit code 3): sfmoe: error: boom in trial 1"));
        // Every call got the launch arguments and its own output folder; the launch is in sweep.json.
        var calls = File.ReadAllLines(Path.Combine(_dir, "calls.txt"));
        Assert.Equal(8, calls.Length);
        Assert.All(calls, c => Assert.Contains("--threads 1 --output-dir " + m.Directory, c));
        var back = SweepManifest.Load(m.Directory, Cl);
        Assert.Equal("parallel", Assert.Single(back.Launches).Launcher);
        // Failed jobs are incomplete, with their error; a relaunch runs only them.
        var st = Sweep.Status(back);
        Assert.Equal("8 jobs: 4 done, 4 incomplete, 0 not launched.", st.Summary);
        Assert.All(st.Jobs.Where(j => j.State == JobState.Incomplete), j => Assert.Equal("sfmoe: error: boom in trial 1", j.LastError));
        var again = Sweep.JobsToLaunch(st);
        Assert.Equal(failed.Select(f => f.Job.Id).Order(), again.Select(j => j.Id).Order());
        var r2 = new LocalLauncher { Parallel = 2 }.Run(back, again, ["/bin/bash", FakeSfmoe(failTrial1: false)]);
        Assert.Empty(r2.Failed);
        Assert.Equal(8, Sweep.Status(back).Count(JobState.Done));
    }

    [Fact]
    public void GpusComeFromTheOverrideCudaVisibleDevicesOrNvidiaSmi()
    {
        Assert.Equal(["0", "1", "2"], GpuInventory.Detect(k => k == "SFMOE_GPU_COUNT" ? "3" : "9,8").Ids);
        Assert.Contains("SFMOE_GPU_COUNT must be a whole number >= 0, got 'two'",
            Assert.ThrowsAny<SfMoeException>(() => GpuInventory.Detect(k => k == "SFMOE_GPU_COUNT" ? "two" : null)).Message);
        // Inside an allocation only the GPUs it was given; CUDA ignores the entries from an invalid one on.
        var visible = GpuInventory.Detect(k => k == "CUDA_VISIBLE_DEVICES" ? "2, 5,-1,7" : null, "/nonexistent/nvidia-smi");
        Assert.Equal(["2", "5"], visible.Ids);
        Assert.Equal(["2", "5"], visible.Groups(1));
        Assert.Empty(GpuInventory.Detect(k => k == "CUDA_VISIBLE_DEVICES" ? "" : null, "/nonexistent/nvidia-smi").Ids);
        // nvidia-smi -L: one line per GPU.
        var smi = Path.Combine(_dir, "nvidia-smi");
        File.WriteAllText(smi, "#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-b)'\necho '  MIG 1g.10gb Device 0: (UUID: MIG-c)'\n");
        File.SetUnixFileMode(smi, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var found = GpuInventory.Detect(_ => null, smi);
        Assert.Equal(["0", "1"], found.Ids);
        Assert.Equal($"{smi} -L: 2 GPUs", found.Source);
        var broken = Path.Combine(_dir, "broken-smi");
        File.WriteAllText(broken, "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.' >&2\nexit 9\n");
        File.SetUnixFileMode(broken, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Assert.Equal("LocalLauncher.GpusPerJob 1 needs GPUs; none found (" + broken + " -L failed (exit code 9): NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.)",
            Assert.ThrowsAny<SfMoeException>(() => GpuInventory.Detect(_ => null, broken).Groups(1)).Message);
        Assert.Equal("LocalLauncher.GpusPerJob 1 needs GPUs; none found (/nonexistent/nvidia-smi -L: not found; where GPUs have no nvidia-smi, SFMOE_GPU_COUNT=N says how many there are)",
            Assert.ThrowsAny<SfMoeException>(() => GpuInventory.Detect(_ => null, "/nonexistent/nvidia-smi").Groups(1)).Message);
        // Disjoint groups of N, the leftover idle; more than there are is an error.
        var five = new GpuInventory(["0", "1", "2", "3", "4"], "test");
        Assert.Equal(["0,1", "2,3"], five.Groups(2));
        Assert.Equal(["0", "1", "2", "3", "4"], five.Groups(1));
        Assert.Equal("LocalLauncher.GpusPerJob 6 is above the 5 GPUs found (test)", Assert.ThrowsAny<SfMoeException>(() => five.Groups(6)).Message);
        Assert.Contains("must be >= 1", Assert.ThrowsAny<SfMoeException>(() => five.Groups(0)).Message);
    }

    /// <summary>A stand-in for sfmoe on GPUs: records its CUDA_VISIBLE_DEVICES and arguments, takes a lock per GPU
    /// (a GPU already locked is a conflict), waits until a second job runs (unless it started last), records how many
    /// run, then writes its results.</summary>
    string FakeGpuSfmoe(int jobs)
    {
        var path = Path.Combine(_dir, "fake-gpu-sfmoe.sh");
        File.WriteAllText(path, $$"""
            #!/bin/bash
            d={{_dir}}
            out=""; args=("$@")
            for ((i=0; i<${#args[@]}; i++)); do [ "${args[$i]}" = --output-dir ] && out=${args[$((i+1))]}; done
            echo "$CUDA_VISIBLE_DEVICES" >> $d/gpus.txt
            echo "$@" >> $d/calls.txt
            IFS=, read -ra ids <<< "$CUDA_VISIBLE_DEVICES"
            for g in "${ids[@]}"; do mkdir $d/gpu-$g 2>/dev/null || echo "GPU $g shared" >> $d/conflicts.txt; done
            mkdir -p $d/running $d/started && touch $d/running/$$ $d/started/$$
            for i in $(seq 300); do
              n=$(ls $d/running | wc -l)
              [ "$n" -ge 2 ] || [ "$(ls $d/started | wc -l)" -ge {{jobs}} ] && break
              sleep 0.1
            done
            echo "$n" >> $d/concurrency.txt
            sleep 0.2
            rm -f $d/running/$$
            for g in "${ids[@]}"; do rmdir $d/gpu-$g; done
            echo '{"step": 0}' >> "$out/results.jsonl"
            echo done > "$out/done"
            """.Replace("\r", ""));
        return path;
    }

    [Fact]
    public void TheParallelLauncherGivesEachJobItsOwnGpus()
    {
        var m = SweepManifest.Create(Path.Combine(_dir, "sweep"), Def(), Cl, FourEnvs);   // 4 jobs
        m.Save();
        // 5 GPUs, 2 per job: two jobs at once on 0,1 and 2,3; GPU 4 stays idle. Parallel above that is capped.
        var lines = new List<string>();
        var launcher = new LocalLauncher { Parallel = 8, GpusPerJob = 2, Gpus = ["0", "1", "2", "3", "4"], LaunchArgs = ["--device", "cuda"],
                                           Report = l => { lock (lines) lines.Add(l); } };
        var r = launcher.Run(m, m.Jobs, ["/bin/bash", FakeGpuSfmoe(4)]);
        Assert.Empty(r.Failed);
        Assert.Equal(4, r.Outcomes.Count);
        Assert.False(File.Exists(Path.Combine(_dir, "conflicts.txt")), "two jobs at once shared a GPU");
        var gpus = File.ReadAllLines(Path.Combine(_dir, "gpus.txt"));
        Assert.Equal(4, gpus.Length);
        Assert.All(gpus, g => Assert.Contains(g, new[] { "0,1", "2,3" }));
        Assert.Equal(["0,1", "2,3"], gpus.Distinct().Order());
        var counts = File.ReadAllLines(Path.Combine(_dir, "concurrency.txt")).Select(int.Parse).ToArray();
        Assert.Equal(2, counts.Max());
        Assert.All(File.ReadAllLines(Path.Combine(_dir, "calls.txt")), c => Assert.Contains("--device cuda --output-dir ", c));
        Assert.Contains(lines, l => l.Contains("(GPU 0,1): started"));
        Assert.Contains("CUDA_VISIBLE_DEVICES=", File.ReadAllText(Path.Combine(m.JobDirectory(m.Jobs[0]), SweepManifest.JobLogName)));
        Assert.Equal("parallel", Assert.Single(SweepManifest.Load(m.Directory, Cl).Launches).Launcher);

        // Too few GPUs: an error before anything starts (nothing recorded, no job folder).
        var m2 = SweepManifest.Create(Path.Combine(_dir, "none"), Def(), Cl, FourEnvs);
        m2.Save();
        var e = Assert.ThrowsAny<SfMoeException>(() => new LocalLauncher { Parallel = 2, GpusPerJob = 1, Gpus = [] }.Run(m2, m2.Jobs, ["/bin/false"]));
        Assert.Equal("LocalLauncher.GpusPerJob 1 needs GPUs; none found (LocalLauncher.Gpus)", e.Message);
        Assert.Empty(SweepManifest.Load(m2.Directory, Cl).Launches);
        Assert.All(m2.Jobs, j => Assert.False(Directory.Exists(m2.JobDirectory(j))));
    }

    [Fact]
    public void ALocalLaunchHoldsTheSweepsLock()
    {
        var m = SweepManifest.Create(_dir, Def(), Cl, FourEnvs);
        Assert.False(Sweep.IsLocalLaunchRunning(_dir));
        using (Sweep.LockForLocalLaunch(_dir))
        {
            Assert.True(Sweep.IsLocalLaunchRunning(_dir));
            Assert.Contains("another launch", Assert.ThrowsAny<SfMoeException>(() => Sweep.LockForLocalLaunch(_dir)).Message);
            Assert.Contains("local launch of this sweep is running", Assert.ThrowsAny<SfMoeException>(() => Sweep.JobsToLaunch(Sweep.Status(m))).Message);
        }
        Assert.False(Sweep.IsLocalLaunchRunning(_dir));
    }

    [Fact]
    public void ThreadsAreSplitBetweenParallelJobs()
    {
        Assert.Equal(8, LocalLauncher.ThreadsPerJob(32, 4));
        Assert.Equal(1, LocalLauncher.ThreadsPerJob(2, 2));
        Assert.Equal(1, LocalLauncher.ThreadsPerJob(2, 8));
        Assert.Equal(3, LocalLauncher.ThreadsPerJob(7, 2));
    }

    // ---- Slurm

    [Fact]
    public void TheSlurmScriptMapsArrayTasksToJobs()
    {
        var m = SweepManifest.Create(Path.Combine(_dir, "my_sweep"), Def("--steps", "30"), Cl, FourEnvs);
        var o = new SlurmOptions
        {
            Partition = "gpu", Time = "04:00:00", CpusPerTask = 4, Gpus = "1", Mem = "16G", MaxConcurrent = 10,
            ExtraLines = ["--account=abc", "#SBATCH --qos=high"],
        };
        var script = SlurmScript.Generate(m, m.Jobs, ["/usr/bin/dotnet", "/opt/sfmoe dir/SfMoe.Cli.dll"], ["--threads", "4", "--workers", "2"], o);
        var lines = script.Split('\n');
        Assert.Equal("#!/bin/bash", lines[0]);
        Assert.Equal(
            [$"#SBATCH --job-name=sfmoe-{Path.GetFileName(m.Directory)}", "#SBATCH --array=0-3%10", $"#SBATCH --output={m.Directory}/slurm/%A_%a.out",
             "#SBATCH --cpus-per-task=4", "#SBATCH --partition=gpu", "#SBATCH --time=04:00:00", "#SBATCH --gpus=1", "#SBATCH --mem=16G",
             "#SBATCH --account=abc", "#SBATCH --qos=high"],
            lines.Where(l => l.StartsWith("#SBATCH")));
        Assert.Contains("sfmoe=(/usr/bin/dotnet '/opt/sfmoe dir/SfMoe.Cli.dll')", lines);
        Assert.Contains("launch_args=(--threads 4 --workers 2)", lines);
        Assert.Contains($"  0) run_job {m.Jobs[0].Id} {string.Join(" ", Cl.JobArguments(m.Jobs[0]))} ;;", lines);
        Assert.Contains($"  1) run_job {m.Jobs[1].Id} {string.Join(" ", Cl.JobArguments(m.Jobs[1]))} ;;", lines);
        // Several arrays when the jobs exceed the largest array.
        var many = SweepManifest.Create(Path.Combine(_dir, "many"), Def() with { TestEnvs = null, Trials = 3 }, Cl, FourEnvs);   // 12 jobs
        var parts = SlurmLauncher.Scripts(many, many.Jobs, ["sfmoe"], [], new SlurmOptions { MaxArraySize = 5 });
        Assert.Equal(new[] { 5, 5, 2 }, parts.Select(p => p.Jobs.Count));
        Assert.Contains("#SBATCH --array=0-1\n", parts[2].Script);
        Assert.Contains("white space", Assert.ThrowsAny<SfMoeException>(() => SlurmScript.Generate(m, m.Jobs, ["x"], [], o with { Partition = "a b" })).Message);
        // CPUs per task: as given; else 8 per GPU of --gpus; else 1.
        string Cpus(SlurmOptions so) => SlurmScript.Generate(m, m.Jobs, ["x"], [], so).Split('\n').Single(l => l.StartsWith("#SBATCH --cpus-per-task="));
        Assert.Equal("#SBATCH --cpus-per-task=1", Cpus(new SlurmOptions()));
        Assert.Equal("#SBATCH --cpus-per-task=8", Cpus(new SlurmOptions { Gpus = "1" }));
        Assert.Equal("#SBATCH --cpus-per-task=16", Cpus(new SlurmOptions { Gpus = "a100:2" }));
        Assert.Equal("#SBATCH --cpus-per-task=8", Cpus(new SlurmOptions { Gpus = "a100" }));
        Assert.Equal("#SBATCH --cpus-per-task=3", Cpus(new SlurmOptions { Gpus = "2", CpusPerTask = 3 }));
        Assert.Contains("must be >= 1", Assert.ThrowsAny<SfMoeException>(() => Cpus(new SlurmOptions { CpusPerTask = 0 })).Message);
    }

    [Fact]
    public void ShellQuotingKeepsWordsIntact()
    {
        Assert.Equal("--steps", SlurmScript.Quote("--steps"));
        Assert.Equal("'[S,F]x2'", SlurmScript.Quote("[S,F]x2"));
        Assert.Equal("'it'\\''s here'", SlurmScript.Quote("it's here"));
        Assert.Equal("''", SlurmScript.Quote(""));
    }

    [Fact]
    public void TheSlurmScriptSkipsDoneJobsResumesCheckpointedOnesAndRestartsTheRest()
    {
        var m = SweepManifest.Create(Path.Combine(_dir, "s"), Def() with { Trials = 2, TestEnvs = [0, 1, 2] }, Cl, FourEnvs);   // 6 jobs
        var fake = Path.Combine(_dir, "echo-sfmoe.sh");
        // The fake sfmoe writes its arguments to args-TASK.
        File.WriteAllText(fake, "#!/bin/bash\necho \"$@\" > " + _dir + "/args-$SLURM_ARRAY_TASK_ID\n");
        var script = Path.Combine(_dir, "t.sbatch");
        File.WriteAllText(script, SlurmScript.Generate(m, m.Jobs, ["/bin/bash", fake], ["--threads", "1"], new SlurmOptions()));
        Directory.CreateDirectory(m.JobDirectory(m.Jobs[0]));
        File.WriteAllText(Path.Combine(m.JobDirectory(m.Jobs[0]), "done"), "");
        Directory.CreateDirectory(m.JobDirectory(m.Jobs[1]));
        File.WriteAllText(Path.Combine(m.JobDirectory(m.Jobs[1]), "train_state.safetensors"), "");
        Directory.CreateDirectory(m.JobDirectory(m.Jobs[2]));
        File.WriteAllText(Path.Combine(m.JobDirectory(m.Jobs[2]), "results.jsonl"), "stale");
        string Run(int task)
        {
            var psi = new ProcessStartInfo("/bin/bash") { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add(script);
            psi.Environment["SLURM_ARRAY_TASK_ID"] = task.ToString();
            using var p = Process.Start(psi)!;
            var o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == (task < 6 ? 0 : 2), o);
            return o;
        }
        Assert.Contains("is done already", Run(0));
        Assert.False(File.Exists(Path.Combine(_dir, "args-0")));
        Assert.Contains("resuming job", Run(1));
        Assert.Equal(string.Join(" ", ["train", .. Cl.JobArguments(m.Jobs[1]), "--threads", "1", "--output-dir", m.JobDirectory(m.Jobs[1]), "--resume"]),
            File.ReadAllText(Path.Combine(_dir, "args-1")).Trim());
        Run(2);
        Assert.False(File.Exists(Path.Combine(m.JobDirectory(m.Jobs[2]), "results.jsonl")), "the folder of a run without a training state is emptied");
        Assert.EndsWith("--output-dir " + m.JobDirectory(m.Jobs[2]), File.ReadAllText(Path.Combine(_dir, "args-2")).Trim());
        Run(3);
        Assert.True(Directory.Exists(m.JobDirectory(m.Jobs[3])));
        Assert.Contains("no job for task 6", Run(6));
    }

    [Fact]
    public void SqueueAndSacctOutputIsParsed()
    {
        var q = SlurmClient.ParseSqueue("12|0|COMPLETED|None\n12|1|RUNNING|None\n12|2|PENDING|Resources\n\n13|0|FAILED|NonZeroExitCode\nN/A|N/A|X|Y\n");
        Assert.Equal(4, q.Count);
        Assert.Equal(new SlurmTaskState("12", 2, "PENDING", "Resources", "squeue"), q[2]);
        Assert.True(q[1].Active);
        Assert.True(q[2].Active);
        Assert.False(q[0].Active);
        Assert.Equal("FAILED NonZeroExitCode (13_0)", q[3].ToString());
        var a = SlurmClient.ParseSacct("12_0|COMPLETED|0:0\n12_1|CANCELLED by 0|0:15\n12_[2-5]|PENDING|0:0\n12_6|OUT_OF_MEMORY|0:125\n12_7.batch|FAILED|1:0\n");
        Assert.Equal(3, a.Count);
        Assert.Equal(new SlurmTaskState("12", 1, "CANCELLED", "exit 0:15", "sacct"), a[1]);
        Assert.Equal("OUT_OF_MEMORY", a[2].State);
        Assert.Equal("", a[0].Reason);
    }

    /// <summary>Fake squeue/sacct/sbatch: shell scripts printing canned answers.</summary>
    SlurmClient FakeSlurm(string squeueOut, int squeueCode, string sacctErr, string sbatchOut = "77\n")
    {
        string Tool(string name, string stdout, int code, string stderr = "")
        {
            var p = Path.Combine(_dir, name + ".sh");
            File.WriteAllText(p, $"#!/bin/bash\necho \"$@\" >> {_dir}/{name}.calls\nprintf '%s' '{stdout}'\nprintf '%s' '{stderr}' >&2\nexit {code}\n");
            File.SetUnixFileMode(p, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            return p;
        }
        return new SlurmClient
        {
            Squeue = Tool("squeue", squeueOut, squeueCode, squeueCode == 0 ? "" : "slurm_load_jobs error: Invalid job id specified"),
            Sacct = Tool("sacct", "", 1, sacctErr),
            Sbatch = Tool("sbatch", sbatchOut, 0),
        };
    }

    [Fact]
    public void StatusJoinsSlurmsStatesAndRelaunchesSkipQueuedTasks()
    {
        var m = SweepManifest.Create(_dir, Def() with { TestEnvs = [0, 1, 2] }, Cl, FourEnvs);   // 6 jobs
        var client = FakeSlurm("", 0, "", "41\n");
        var ids = SlurmLauncher.Submit(m, m.Jobs.Take(4).ToArray(), ["sfmoe"], ["--threads", "1"], new SlurmOptions(), client);
        Assert.Equal(new[] { "41" }, ids);
        Assert.Contains("--parsable", File.ReadAllText(Path.Combine(_dir, "sbatch.calls")));
        Assert.All(m.Jobs.Take(4), j => Assert.Equal(JobState.Incomplete, m.StateOf(j)));   // queued jobs have their folder
        var script = Assert.Single(Directory.GetFiles(Path.Combine(_dir, "slurm"), "*.sbatch"));
        Assert.Contains("#SBATCH --array=0-3\n", File.ReadAllText(script));
        var back = SweepManifest.Load(_dir, Cl);
        Assert.Equal("41", Assert.Single(back.Launches).SlurmJobId);

        // Task 0 done, 1 failed, 2 running, 3 pending.
        File.WriteAllText(Path.Combine(m.JobDirectory(m.Jobs[0]), "done"), "");
        var queue = FakeSlurm("41|0|COMPLETED|None\n41|1|FAILED|NonZeroExitCode\n41|2|RUNNING|None\n41|3|PENDING|Priority\n", 0, "Slurm accounting storage is disabled");
        var st = Sweep.Status(back, queue);
        Assert.Equal("6 jobs: 1 done, 3 incomplete, 2 not launched.", st.Summary);
        Assert.Equal(new[] { "COMPLETED", "FAILED", "RUNNING", "PENDING", null, null }, st.Jobs.Select(j => j.Scheduler?.State));
        Assert.Contains(st.Notes, n => n.StartsWith("sacct: Slurm accounting storage is disabled"));
        Assert.Contains("--jobs=41", File.ReadAllText(Path.Combine(_dir, "squeue.calls")));
        Assert.Equal(Path.Combine(_dir, "slurm", "41_1.out"), st.Jobs[1].Log);
        // A relaunch takes the failed task's job and the two never launched, not the running or pending ones.
        Assert.Equal(new[] { m.Jobs[1].Id, m.Jobs[4].Id, m.Jobs[5].Id }, Sweep.JobsToLaunch(st).Select(j => j.Id));
        Assert.Equal(new[] { m.Jobs[1].Id }, Sweep.IncompleteToDelete(st).Select(j => j.Job.Id));

        // squeue forgets finished jobs ("Invalid job id"): nothing is queued then.
        var forgotten = Sweep.Status(back, FakeSlurm("", 1, "Slurm accounting storage is disabled"));
        Assert.Null(forgotten.QueueError);
        Assert.All(forgotten.Jobs, j => Assert.Null(j.Scheduler));
        // squeue failing otherwise: a relaunch must not guess.
        var broken = new SlurmClient { Squeue = "/nonexistent/squeue", Sacct = "/nonexistent/sacct" };
        var unknown = Sweep.Status(back, broken);
        Assert.NotNull(unknown.QueueError);
        Assert.Contains("cannot tell which Slurm tasks", Assert.ThrowsAny<SfMoeException>(() => Sweep.JobsToLaunch(unknown)).Message);
    }
}
