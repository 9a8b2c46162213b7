using SfMoe.Data;
using static SfMoe.Analysis.ReportText;

namespace SfMoe.Analysis;

/// <summary>
/// Training curves of every run under a folder (<c>sfmoe plot</c>): <c>curves_{run}.png</c> per run (loss, aux loss,
/// accuracy per environment, dropped tokens and expert load per sparse block over steps) and <c>curves_compare.png</c>
/// (loss, aux loss, held-out and validation accuracy of all runs).
/// </summary>
public static class CurvesReport
{
    /// <summary>Reads the runs under <paramref name="inputDir"/> and writes the PNGs into <paramref name="outputDir"/>
    /// (default: <paramref name="inputDir"/>). Returns the files written.</summary>
    public static IReadOnlyList<string> Run(string inputDir, string? outputDir = null, Action<string>? log = null)
    {
        var runs = TrainingCurves.ReadAll(inputDir);
        outputDir ??= inputDir;
        Directory.CreateDirectory(outputDir);
        var files = new List<string>();
        var used = new HashSet<string>();
        foreach (var r in runs)
        {
            var envNames = r.Dataset is null ? null : Datasets.TryGetSpec(r.Dataset)?.Environments;
            var name = Safe(r.Name.Replace('/', '_').Replace('\\', '_'));
            while (!used.Add(name)) name += "_";
            var path = Path.Combine(outputDir, $"curves_{name}.png");
            Plots.Curves(r, envNames).SavePng(path);
            files.Add(path);
            log?.Invoke($"{r.Name}: {r.Steps.Length} evaluations -> {path}");
        }
        var cmp = Path.Combine(outputDir, "curves_compare.png");
        Plots.CompareRuns(runs).SavePng(cmp);
        files.Add(cmp);
        return files;
    }
}
