using System.Diagnostics;
using System.Globalization;

namespace SfMoe.Runs.Sweeps;

/// <summary>The NVIDIA GPUs a launch on this machine may give its jobs, and where that list came from.</summary>
/// <param name="Ids">The GPUs, as <c>CUDA_VISIBLE_DEVICES</c> spells them (indices or UUIDs).</param>
/// <param name="Source">How they were found, for messages: "SFMOE_GPU_COUNT=2", "CUDA_VISIBLE_DEVICES=2,3", "nvidia-smi -L: 4 GPUs".</param>
internal sealed record GpuInventory(IReadOnlyList<string> Ids, string Source)
{
    /// <summary>Overrides the detection with a count (GPUs 0..n-1): for tests and for machines where nvidia-smi is
    /// not on PATH.</summary>
    public const string CountVariable = "SFMOE_GPU_COUNT";

    /// <summary>
    /// The GPUs of this machine: <see cref="CountVariable"/> when set; else the entries of <c>CUDA_VISIBLE_DEVICES</c>
    /// when set (a launch inside an allocation hands out only what it was given; CUDA ignores the entries from the
    /// first invalid one, e.g. -1, on); else one per "GPU n: ..." line of <c>nvidia-smi -L</c>; else none.
    /// </summary>
    public static GpuInventory Detect(Func<string, string?>? env = null, string nvidiaSmi = "nvidia-smi")
    {
        env ??= Environment.GetEnvironmentVariable;
        var count = env(CountVariable);
        if (!string.IsNullOrWhiteSpace(count))
        {
            if (!int.TryParse(count.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int n))
                throw new RunException($"{CountVariable} must be a whole number >= 0, got '{count}'");
            return new(Enumerable.Range(0, n).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToArray(), $"{CountVariable}={n}");
        }
        var visible = env("CUDA_VISIBLE_DEVICES");
        if (visible is not null)
        {
            var ids = visible.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                .TakeWhile(s => !s.StartsWith('-')).ToArray();
            return new(ids, $"CUDA_VISIBLE_DEVICES={visible}");
        }
        var psi = new ProcessStartInfo(nvidiaSmi) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        psi.ArgumentList.Add("-L");
        try
        {
            using var p = Process.Start(psi);
            if (p is null) return new([], $"{nvidiaSmi} -L did not start");
            p.StandardInput.Close();
            var o = p.StandardOutput.ReadToEndAsync();
            var e = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(30_000))
            {
                try { p.Kill(true); } catch (InvalidOperationException) { }
                return new([], $"{nvidiaSmi} -L did not answer within 30 s");
            }
            if (p.ExitCode != 0)
            {
                var msg = (e.Result.Trim().Length > 0 ? e.Result : o.Result).Trim().Split('\n')[0].Trim();
                return new([], $"{nvidiaSmi} -L failed (exit code {p.ExitCode}): {msg}");
            }
            int gpus = o.Result.Split('\n').Count(l => l.TrimStart().StartsWith("GPU ", StringComparison.Ordinal));
            return new(Enumerable.Range(0, gpus).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToArray(), $"{nvidiaSmi} -L: {gpus} GPUs");
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return new([], $"{nvidiaSmi} -L: not found; where GPUs have no nvidia-smi, {CountVariable}=N says how many there are");
        }
    }

    /// <summary>
    /// Disjoint groups of <paramref name="perJob"/> GPUs, one per job running at once: floor(GPUs / perJob), each the
    /// <c>CUDA_VISIBLE_DEVICES</c> value of its job ("0", "2,3"); leftover GPUs stay idle. Throws when there are fewer
    /// GPUs than one job needs.
    /// </summary>
    public IReadOnlyList<string> Groups(int perJob)
    {
        if (perJob < 1) throw new RunException($"LocalLauncher.GpusPerJob must be >= 1, got {perJob}");
        if (Ids.Count == 0) throw new RunException($"LocalLauncher.GpusPerJob {perJob} needs GPUs; none found ({Source})");
        if (Ids.Count < perJob)
            throw new RunException($"LocalLauncher.GpusPerJob {perJob} is above the {Ids.Count} GPUs found ({Source})");
        return Ids.Chunk(perJob).Where(c => c.Length == perJob).Select(c => string.Join(",", c)).ToArray();
    }
}
