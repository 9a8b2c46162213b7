using System.Diagnostics;

namespace SfMoe.Host.Tests;

/// <summary>The C# sample app (public API only) runs end to end.</summary>
public class SampleAppTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sfmoe-sample-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task TheSampleAppTrainsEvaluatesPredictsAndShowsRouting()
    {
        var config = AppContext.BaseDirectory.Contains("/Release/") ? "Release" : "Debug";
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (!File.Exists(Path.Combine(root.FullName, "SfMoe.sln"))) root = root.Parent!;
        var dll = Path.Combine(root.FullName, "src-cs", "SfMoe.Sample", "bin", config, "net10.0", "SfMoe.Sample.dll");
        Assert.True(File.Exists(dll), $"sample not built: {dll}");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(dll);
        psi.ArgumentList.Add(Path.Combine(_dir, "run"));
        psi.ArgumentList.Add("4");
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await p.WaitForExitAsync(cts.Token);
        Assert.True(p.ExitCode == 0, await stderr);
        var o = await stdout;
        Assert.Contains("trained 4 steps", o);
        Assert.Contains("env3_out:", o);
        Assert.Matches(@"image of a heart: \w+ [0-9.]+ ?%", o);
        Assert.Matches(@"block 1: experts load \d+/\d+/\d+/\d+, capacity \d+", o);
        Assert.EndsWith("sample done", o.TrimEnd());
    }
}
