using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace SfMoe.Host.Tests.Runs;

/// <summary>`sfmoe sweep` as users run it: dry runs, errors, a parallel sweep that trains, and a real Slurm cluster.</summary>
public class SweepCliTests(ITestOutputHelper output) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sfmoe-sweepcli-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static readonly string RepoRoot = FindRoot();

    static string FindRoot()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (!File.Exists(Path.Combine(root.FullName, "SfMoe.sln"))) root = root.Parent!;
        return root.FullName;
    }

    static string CliDll()
    {
        var config = AppContext.BaseDirectory.Contains("/Release/") ? "Release" : "Debug";
        var dll = Path.Combine(RepoRoot, "src-fs", "SfMoe.Cli", "bin", config, "net10.0", "SfMoe.Cli.dll");
        Assert.True(File.Exists(dll), $"CLI not built: {dll}");
        return dll;
    }

    sealed record Run(int Code, string Out, string Err);

    static Run Exec(string file, IEnumerable<string> args, IDictionary<string, string>? env = null, int timeoutSeconds = 300)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env is not null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000))
        {
            p.Kill(true);
            Assert.Fail($"{file} {string.Join(" ", args)} timed out after {timeoutSeconds} s\n{o.Result}\n{e.Result}");
        }
        p.WaitForExit();
        return new Run(p.ExitCode, o.Result, e.Result);
    }

    static Run Sfmoe(IEnumerable<string> args, IDictionary<string, string>? env = null, int timeoutSeconds = 300) =>
        Exec("dotnet", [CliDll(), .. args], env, timeoutSeconds);

    static readonly string[] TinyTrain = ["--", "--steps", "30", "--checkpoint-freq", "10", "--synthetic-size", "60", "--model", "sfmoe_test_patch8_32", "--no-timings"];

    static string[] TwoByTwo(string dir, params string[] more) =>
        ["sweep", "launch", "--output-dir", dir, "--test-envs", "0", "1", "--single-test-envs", "--n-hparams", "1", "--n-trials", "2", .. more, .. TinyTrain];

    static JsonElement StatusJson(string dir, IDictionary<string, string>? env = null)
    {
        var r = Sfmoe(["sweep", "status", "--output-dir", dir, "--json"], env);
        Assert.True(r.Code == 0, r.Err);
        return JsonDocument.Parse(r.Out).RootElement;
    }

    static Dictionary<string, DateTime> Mtimes(string dir) =>
        Directory.GetFiles(dir).ToDictionary(f => f, File.GetLastWriteTimeUtc);

    [Fact]
    public void DryRunsPrintTheCommandsOrTheBatchScriptAndChangeNothing()
    {
        var dir = Path.Combine(_dir, "dry");
        var local = Sfmoe([.. TwoByTwo(dir, "--dry-run")]);
        Assert.True(local.Code == 0, local.Err);
        var cmds = local.Out.Split('\n').Where(l => l.Contains(" train ")).ToArray();
        Assert.Equal(4, cmds.Length);
        Assert.All(cmds, c => Assert.Matches($@"SfMoe\.Cli\.dll train --algorithm SFMoE --checkpoint-freq 10 --dataset Synthetic --hparams-seed 0 --model sfmoe_test_patch8_32 --no-timings --seed \d+ --steps 30 --synthetic-size 60 --test-env [01] --trial-seed [01] --output-dir {Regex.Escape(dir)}/[0-9a-f]{{32}}$", c));
        Assert.Contains("4 jobs: 0 done, 0 incomplete, 4 not launched.", local.Out);

        var par = Sfmoe([.. TwoByTwo(dir, "--dry-run", "--launcher", "parallel", "--jobs", "2")]);
        Assert.True(par.Code == 0, par.Err);
        Assert.Equal(4, par.Out.Split('\n').Count(l => l.Contains($" --threads {Math.Max(1, Environment.ProcessorCount / 2)} --workers ")));

        var slurm = Sfmoe([.. TwoByTwo(dir, "--dry-run", "--launcher", "slurm", "--partition", "debug", "--time", "00:10:00", "--cpus-per-task", "2",
            "--mem", "2G", "--gpus", "1", "--max-concurrent", "2", "--sbatch", "account=abc")]);
        Assert.True(slurm.Code == 0, slurm.Err);
        Assert.StartsWith("#!/bin/bash\n#SBATCH --job-name=sfmoe-dry\n#SBATCH --array=0-3%2\n", slurm.Out);
        // GPU tasks train on cuda; their data workers get the CPUs the tensor threads do not need.
        foreach (var l in new[] { "#SBATCH --partition=debug", "#SBATCH --time=00:10:00", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=2G",
                                  "#SBATCH --gpus=1", "#SBATCH --account=abc", $"#SBATCH --output={dir}/slurm/%A_%a.out", "launch_args=(--threads 2 --workers 1 --device cuda)" })
            Assert.Contains(l + "\n", slurm.Out);
        Assert.Equal(4, Regex.Matches(slurm.Out, @"^  \d\) run_job [0-9a-f]{32} --algorithm SFMoE ", RegexOptions.Multiline).Count);
        Assert.Contains("Would launch 4 jobs with the slurm launcher.", slurm.Err);
        // Without --cpus-per-task a GPU task gets 8 CPUs per GPU; without --gpus, 1 CPU and the jobs' own device.
        var gpus2 = Sfmoe([.. TwoByTwo(dir, "--dry-run", "--launcher", "slurm", "--gpus", "a100:2")]);
        Assert.True(gpus2.Code == 0, gpus2.Err);
        Assert.Contains("#SBATCH --cpus-per-task=16\n", gpus2.Out);
        Assert.Contains("launch_args=(--threads 16 --workers 15 --device cuda)\n", gpus2.Out);
        var cpu = Sfmoe([.. TwoByTwo(dir, "--dry-run", "--launcher", "slurm")]);
        Assert.Contains("#SBATCH --cpus-per-task=1\n", cpu.Out);
        Assert.Contains("launch_args=(--threads 1 --workers 1)\n", cpu.Out);
        // A sweep whose jobs set a device keeps it.
        var own = Sfmoe([.. TwoByTwo(dir, "--dry-run", "--launcher", "slurm", "--gpus", "1"), "--device", "cuda:0"]);
        Assert.True(own.Code == 0, own.Err);
        Assert.Contains("launch_args=(--threads 8 --workers 7)\n", own.Out);
        Assert.Equal(4, Regex.Matches(own.Out, @"^  \d\) run_job .* --device cuda:0 ", RegexOptions.Multiline).Count);

        // The parallel launcher on GPUs (2 here, by SFMOE_GPU_COUNT): one job per GPU, each with --device cuda.
        var gpuEnv = new Dictionary<string, string> { ["SFMOE_GPU_COUNT"] = "2" };
        var pg = Sfmoe([.. TwoByTwo(dir, "--dry-run", "--launcher", "parallel", "--gpus-per-job", "1")], gpuEnv);
        Assert.True(pg.Code == 0, pg.Err);
        Assert.Contains("GPUs (SFMOE_GPU_COUNT=2): 2 jobs at once, each with CUDA_VISIBLE_DEVICES set to its own: 0 | 1.", pg.Out);
        var pgCmds = pg.Out.Split('\n').Where(l => l.Contains(" train ")).ToArray();
        Assert.Equal(4, pgCmds.Length);
        int t = Math.Max(1, Environment.ProcessorCount / 2);
        Assert.All(pgCmds, c => Assert.Contains($" --threads {t} --workers {Math.Max(1, t - 1)} --device cuda --output-dir ", c));
        var pgOwn = Sfmoe([.. TwoByTwo(dir, "--dry-run", "--launcher", "parallel", "--gpus-per-job", "1", "--jobs", "1"), "--device", "cpu"], gpuEnv);
        Assert.True(pgOwn.Code == 0, pgOwn.Err);
        Assert.Contains("GPUs (SFMOE_GPU_COUNT=2): 1 jobs at once, each with CUDA_VISIBLE_DEVICES set to its own: 0.", pgOwn.Out);
        Assert.All(pgOwn.Out.Split('\n').Where(l => l.Contains(" train ")), c => Assert.DoesNotContain("--device cuda", c));
        Assert.False(Directory.Exists(dir), "a dry run creates nothing");
    }

    [Fact]
    public void AParallelLaunchPinsEachJobToItsOwnGpu()
    {
        var dir = Path.Combine(_dir, "gpu");
        var fake = Path.Combine(_dir, "fake-sfmoe.sh");
        // Records each job's GPU and arguments; a GPU in use by another job at the same time is a conflict.
        File.WriteAllText(fake, $$"""
            #!/bin/bash
            d={{_dir}}
            out=""; args=("$@")
            for ((i=0; i<${#args[@]}; i++)); do [ "${args[$i]}" = --output-dir ] && out=${args[$((i+1))]}; done
            echo "$CUDA_VISIBLE_DEVICES $*" >> $d/calls.txt
            mkdir $d/gpu-$CUDA_VISIBLE_DEVICES 2>/dev/null || echo "GPU $CUDA_VISIBLE_DEVICES shared" >> $d/conflicts.txt
            sleep 0.3
            rmdir $d/gpu-$CUDA_VISIBLE_DEVICES
            echo '{"step": 0}' >> "$out/results.jsonl"
            echo done > "$out/done"
            """.Replace("\r", ""));
        var env = new Dictionary<string, string> { ["SFMOE_GPU_COUNT"] = "3" };
        var r = Sfmoe([.. TwoByTwo(dir, "--launcher", "parallel", "--gpus-per-job", "1", "--sfmoe", "/bin/bash " + fake)], env);
        Assert.True(r.Code == 0, r.Out + r.Err);
        Assert.Contains("GPUs (SFMOE_GPU_COUNT=3): 3 jobs at once, each with CUDA_VISIBLE_DEVICES set to its own: 0 | 1 | 2.", r.Out);
        Assert.Contains("Launched 4 jobs: 4 succeeded, 0 failed.", r.Out);
        Assert.False(File.Exists(Path.Combine(_dir, "conflicts.txt")), "two jobs at once shared a GPU");
        var calls = File.ReadAllLines(Path.Combine(_dir, "calls.txt"));
        Assert.Equal(4, calls.Length);
        Assert.All(calls, c => Assert.Matches(@"^[012] train .* --device cuda --output-dir ", c));
    }

    [Fact]
    public void BadSweepOptionsAreOneLineErrors()
    {
        var dir = Path.Combine(_dir, "bad");
        void Expect(Run r, string fragment)
        {
            Assert.True(r.Code == 2, $"exit code {r.Code}: {r.Out} {r.Err}");
            Assert.StartsWith("sfmoe: error: ", r.Err);
            Assert.Contains(fragment, r.Err);
            Assert.Single(r.Err.Trim().Split('\n'));
        }
        Expect(Sfmoe(["sweep", "launch", "--output-dir", dir, "--dry-run", "--", "--stepz", "3"]), "extra train options (after --): unrecognized argument: '--stepz'");
        Expect(Sfmoe(["sweep", "launch", "--output-dir", dir, "--dry-run", "--", "--seed", "3"]), "--seed is set by the sweep");
        Expect(Sfmoe(["sweep", "launch", "--output-dir", dir, "--dry-run", "--partition", "p"]), "--partition applies to --launcher slurm");
        Expect(Sfmoe(["sweep", "launch", "--output-dir", dir, "--dry-run", "--launcher", "pbs"]), "--launcher must be local, parallel or slurm");
        Expect(Sfmoe(["sweep", "launch", "--output-dir", dir, "--dry-run", "--gpus-per-job", "1"]), "--gpus-per-job applies to --launcher parallel");
        Expect(Sfmoe(["sweep", "launch", "--output-dir", dir, "--dry-run", "--launcher", "parallel", "--gpus-per-job", "1"],
                     new Dictionary<string, string> { ["SFMOE_GPU_COUNT"] = "0" }),
               "--gpus-per-job 1 needs GPUs; none found (SFMOE_GPU_COUNT=0)");
        Expect(Sfmoe(["sweep", "launch", "--output-dir", dir, "--launcher", "parallel", "--gpus-per-job", "2"],
                     new Dictionary<string, string> { ["SFMOE_GPU_COUNT"] = "1" }),
               "--gpus-per-job 2 is above the 1 GPUs found (SFMOE_GPU_COUNT=1)");
        Assert.False(Directory.Exists(dir), "too few GPUs: an error before anything starts");
        Expect(Sfmoe(["sweep", "launch", "--output-dir", dir, "--dry-run", "--test-envs", "7"]), "test env 7 is out of range");
        Expect(Sfmoe(["sweep", "status", "--output-dir", dir]), "folder not found");
        Expect(Sfmoe(["sweep", "status", "--output-dir", _dir]), "holds no sweep.json");
    }

    [Fact]
    public void AParallelSweepTrainsEveryJobAndARelaunchRunsOnlyTheMissingOnes()
    {
        var dir = Path.Combine(_dir, "par");
        var r = Sfmoe([.. TwoByTwo(dir, "--launcher", "parallel", "--jobs", "2")]);
        Assert.True(r.Code == 0, r.Out + r.Err);
        Assert.Contains("Launched 4 jobs: 4 succeeded, 0 failed.", r.Out);
        var st = StatusJson(dir);
        Assert.Equal(4, st.GetProperty("done").GetInt32());
        var jobs = st.GetProperty("jobs").EnumerateArray().ToArray();
        var dirs = jobs.Select(j => j.GetProperty("dir").GetString()!).ToArray();
        Assert.All(jobs, j => Assert.Equal(29, j.GetProperty("last_step").GetInt64()));
        var results = dirs.Select(d => File.ReadAllText(Path.Combine(d, "results.jsonl"))).ToArray();

        // A "killed" job before its first checkpoint (no training state) and one after it (a training state, results cut).
        File.Delete(Path.Combine(dirs[0], "done"));
        File.Delete(Path.Combine(dirs[0], "train_state.safetensors"));
        File.Delete(Path.Combine(dirs[1], "done"));
        File.WriteAllText(Path.Combine(dirs[1], "results.jsonl"), results[1].Split('\n')[0] + "\n");
        var untouched = dirs[2..].Select(Mtimes).ToArray();
        var st2 = StatusJson(dir);
        Assert.Equal(2, st2.GetProperty("incomplete").GetInt32());

        // Relaunch without repeating the definition (sweep.json has it), with the same threads per job.
        var again = Sfmoe(["sweep", "launch", "--output-dir", dir, "--launcher", "parallel", "--jobs", "2"]);
        Assert.True(again.Code == 0, again.Out + again.Err);
        Assert.Contains("Launching 2 jobs (1 resuming) with the parallel launcher.", again.Out);
        Assert.Contains("Launched 2 jobs: 2 succeeded, 0 failed.", again.Out);
        Assert.Equal(4, StatusJson(dir).GetProperty("done").GetInt32());
        for (int k = 0; k < 2; k++)
            Assert.Equal(results[k], File.ReadAllText(Path.Combine(dirs[k], "results.jsonl")));   // a run is a function of its seeds
        Assert.Contains("--resume", File.ReadAllText(Path.Combine(dirs[1], "job.out")));
        for (int k = 2; k < 4; k++) Assert.Equal(untouched[k - 2], Mtimes(dirs[k]));
        var nothing = Sfmoe(["sweep", "launch", "--output-dir", dir]);
        Assert.Contains("Nothing to launch.", nothing.Out);

        var collect = Sfmoe(["collect", "--input-dir", dir, "--format", "text"]);
        Assert.True(collect.Code == 0, collect.Err);
        Assert.Contains("-------- Sweep (sweep.json): 4 jobs: 4 done, 0 incomplete, 0 not launched.", collect.Out);
        Assert.Matches(@"SFMoE +\d+\.\d \+/- \d+\.\d +\d+\.\d \+/- \d+\.\d +X +X", collect.Out);

        // delete-incomplete removes an unfinished job's folder (not without --yes when there is no terminal).
        File.Delete(Path.Combine(dirs[3], "done"));
        var refused = Sfmoe(["sweep", "delete-incomplete", "--output-dir", dir]);
        Assert.Equal(2, refused.Code);
        Assert.True(Directory.Exists(dirs[3]));
        var del = Sfmoe(["sweep", "delete-incomplete", "--output-dir", dir, "--yes"]);
        Assert.True(del.Code == 0, del.Err);
        Assert.Contains("Deleted 1 job folders.", del.Out);
        Assert.False(Directory.Exists(dirs[3]));
        Assert.Equal("not launched", StatusJson(dir).GetProperty("jobs")[3].GetProperty("state").GetString());
        Assert.Equal(3, Directory.GetDirectories(dir).Count(d => Regex.IsMatch(Path.GetFileName(d), "^[0-9a-f]{32}$")));
    }

    static bool IsRoot() => Exec("id", ["-u"]).Out.Trim() == "0";

    static bool OnPath(string tool) => Exec("/bin/sh", ["-c", "command -v " + tool]).Code == 0;

    /// <summary>
    /// The real thing: scripts/slurm-local.sh starts a single-node cluster (munge, slurmctld, slurmd); a 2 test env x
    /// 2 trial sweep of a tiny SF-MoE on Synthetic goes through sbatch as one array; one task is killed (scancel) as it
    /// runs (held until then, so that it cannot finish first under load), one is cancelled while queued, and a finished job is "killed" after a checkpoint (done removed, results
    /// cut); collect prints the tables and lists the unfinished jobs; a relaunch runs exactly those three (one
    /// resumes) and leaves the other job's files untouched. The daemons are stopped in any case.
    /// </summary>
    [SkippableFact]
    public void ASweepRunsOnARealSlurmClusterAndARelaunchCompletesOnlyTheMissingJobs()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "Slurm test: Linux only");
        Skip.IfNot(OnPath("slurmctld") && OnPath("slurmd") && OnPath("sbatch") && OnPath("munged"),
            "Slurm test: Slurm is not installed (apt-get install -y --no-install-recommends slurm-wlm munge)");
        Skip.IfNot(IsRoot(), "Slurm test: needs root (the local cluster runs its daemons and jobs as root)");

        var sw = Stopwatch.StartNew();
        var cluster = Path.Combine(_dir, "cluster");
        var script = Path.Combine(RepoRoot, "scripts", "slurm-local.sh");
        var env = new Dictionary<string, string> { ["SLURM_CONF"] = Path.Combine(cluster, "slurm.conf") };
        var start = Exec("/bin/bash", [script, "start", cluster], timeoutSeconds: 120);
        try
        {
            Assert.True(start.Code == 0, $"cluster start failed:\n{start.Out}\n{start.Err}");
            var dir = Path.Combine(_dir, "sweep");
            // Task 0 is held (its sfmoe waits for a release file) until it has been cancelled, so it is killed while it
            // runs however fast a run is: the outcome does not depend on timing. The relaunch runs plain sfmoe.
            var held = Path.Combine(_dir, "task0-held");
            var release = Path.Combine(_dir, "task0-release");
            var hold = Path.Combine(_dir, "hold-task0.sh");
            File.WriteAllText(hold, $$"""
                #!/bin/bash
                if [ "${SLURM_ARRAY_TASK_ID:-}" = 0 ]; then
                  touch {{held}}
                  while [ ! -e {{release}} ]; do sleep 0.1; done
                fi
                exec "$@"
                """.Replace("\r", ""));
            var launch = Sfmoe([.. TwoByTwo(dir, "--launcher", "slurm", "--max-concurrent", "1", "--time", "00:10:00", "--sfmoe",
                                            $"/bin/bash {hold} {Exec("/bin/sh", ["-c", "command -v dotnet"]).Out.Trim()} {CliDll()}")], env);
            Assert.True(launch.Code == 0, launch.Out + launch.Err);
            var array = Regex.Match(launch.Out, @"submitted array job (\d+): 4 tasks").Groups[1].Value;
            Assert.NotEqual("", array);
            // Once task 0 runs (held), cancel task 3 while it waits behind the %1 throttle, then task 0; only then
            // release the hold (a task that survived the cancel would now finish, and the test would say so).
            var running = Stopwatch.StartNew();
            while (!File.Exists(held))
            {
                Assert.True(running.Elapsed < TimeSpan.FromSeconds(120), "task 0 never ran");
                Thread.Sleep(100);
            }
            Assert.True(Exec("scancel", [array + "_3"], env).Code == 0);
            Assert.True(Exec("scancel", [array + "_0"], env).Code == 0);
            while (Exec("squeue", ["--noheader", "--array", "--jobs=" + array, "--format=%K %T"], env).Out.Split('\n').Any(l => l.Trim().StartsWith("0 ")))
            {
                Assert.True(running.Elapsed < TimeSpan.FromSeconds(180), "task 0 did not end after scancel");
                Thread.Sleep(100);
            }
            File.WriteAllText(release, "");

            var wait = Sfmoe(["sweep", "wait", "--output-dir", dir, "--timeout", "300", "--poll", "1"], env);
            Assert.True(wait.Code == 1, "two jobs were cancelled: " + wait.Out + wait.Err);
            var st = StatusJson(dir, env);
            Assert.Equal(2, st.GetProperty("done").GetInt32());
            var jobs = st.GetProperty("jobs").EnumerateArray().ToArray();
            Assert.Equal(new[] { "incomplete", "done", "done", "incomplete" }, jobs.Select(j => j.GetProperty("state").GetString()));
            // A running task killed by scancel is CANCELLED; one cancelled while queued leaves no record in Slurm.
            Assert.Equal(new[] { "CANCELLED", "COMPLETED", "COMPLETED", null }, jobs.Select(j => j.GetProperty("slurm_state").GetString()));
            Assert.Equal(array + "_3", jobs[3].GetProperty("slurm_task").GetString());
            Assert.True(File.Exists(Path.Combine(dir, "slurm", array + "_1.out")), "per-task logs");
            Assert.Contains("CANCELLED", File.ReadAllText(Path.Combine(dir, "slurm", array + "_0.out")));

            // The tables, and the two unfinished jobs listed rather than dropped.
            var collect = Sfmoe(["collect", "--input-dir", dir, "--format", "text"], env);
            Assert.True(collect.Code == 0, collect.Err);
            Assert.Contains("SFMoE", collect.Out);
            Assert.Contains("cartoon", collect.Out);
            Assert.Contains("painting", collect.Out);
            Assert.Contains("-------- Sweep (sweep.json): 4 jobs: 2 done, 2 incomplete, 0 not launched.", collect.Out);
            Assert.Contains($"incomplete: {jobs[0].GetProperty("id").GetString()} Synthetic SFMoE test_envs=[0] hparams_seed=0 trial_seed=0", collect.Out);
            Assert.Contains($"Slurm CANCELLED ({array}_0)", collect.Out);
            Assert.Contains($"incomplete: {jobs[3].GetProperty("id").GetString()} Synthetic SFMoE test_envs=[1] hparams_seed=0 trial_seed=1", collect.Out);
            Assert.Contains($"Slurm no record of task {array}_3", collect.Out);

            // Job 1 "killed" after a checkpoint: its training state stays, its results are cut and done is gone.
            var dirs = jobs.Select(j => j.GetProperty("dir").GetString()!).ToArray();
            var results1 = File.ReadAllText(Path.Combine(dirs[1], "results.jsonl"));
            File.Delete(Path.Combine(dirs[1], "done"));
            File.WriteAllText(Path.Combine(dirs[1], "results.jsonl"), results1.Split('\n')[0] + "\n");
            var untouched = Mtimes(dirs[2]);

            var relaunch = Sfmoe(["sweep", "launch", "--output-dir", dir, "--launcher", "slurm", "--wait", "--timeout", "300", "--poll", "1"], env);
            Assert.True(relaunch.Code == 0, relaunch.Out + relaunch.Err);
            Assert.Contains("Launching 3 jobs (1 resuming) with the slurm launcher.", relaunch.Out);
            Assert.Matches(@"submitted array job \d+: 3 tasks", relaunch.Out);
            var after = StatusJson(dir, env);
            Assert.Equal(4, after.GetProperty("done").GetInt32());
            Assert.Equal(results1, File.ReadAllText(Path.Combine(dirs[1], "results.jsonl")));
            Assert.Equal(untouched, Mtimes(dirs[2]));
            Assert.Contains("resuming job", File.ReadAllText(after.GetProperty("jobs")[1].GetProperty("log").GetString()!));

            var final = Sfmoe(["collect", "--input-dir", dir, "--format", "text"], env);
            Assert.True(final.Code == 0, final.Err);
            Assert.Contains("-------- Sweep (sweep.json): 4 jobs: 4 done, 0 incomplete, 0 not launched.", final.Out);
            Assert.Matches(@"SFMoE +\d+\.\d \+/- \d+\.\d +\d+\.\d \+/- \d+\.\d +X +X", final.Out);
        }
        finally
        {
            var stop = Exec("/bin/bash", [script, "stop", cluster], timeoutSeconds: 120);
            Assert.True(stop.Code == 0, $"cluster stop failed:\n{stop.Out}\n{stop.Err}");
            foreach (var pid in new[] { "slurmctld.pid", "slurmd.pid", "munged.pid" })
                Assert.False(File.Exists(Path.Combine(cluster, pid)), pid + " left behind");
            output.WriteLine($"Slurm test: {sw.Elapsed.TotalSeconds:F0} s");
        }
    }
}
