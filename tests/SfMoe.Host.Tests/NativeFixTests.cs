using System.Diagnostics;

namespace SfMoe.Host.Tests;

/// <summary>The build's fix for TorchSharp's native library on Debian 12 (build/ElfVersionPatch.cs).</summary>
public class NativeFixTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sfmoe-elf-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>The unpatched library as NuGet restored it.</summary>
    static string Original()
    {
        var root = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
                   ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        var p = Path.Combine(root, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.True(File.Exists(p), $"restored TorchSharp native library not found at {p}");
        return p;
    }

    static ushort FlagsOf(string path, string version)
    {
        var bytes = File.ReadAllBytes(path);
        var e = new Elf(bytes);
        var vn = e.Sections.Single(s => s.Type == Elf.SHT_GNU_verneed);
        var str = e.Sections[(int)vn.Link];
        long off = vn.Offset;
        for (uint i = 0; i < vn.Info; i++)
        {
            long a = off + e.U32(off + 8);
            for (int j = 0; j < e.U16(off + 2); j++)
            {
                if (e.Str(str.Offset + e.U32(a + 8)) == version) return e.U16(a + 4);
                a += e.U32(a + 12);
            }
            off += e.U32(off + 12);
        }
        throw new KeyNotFoundException(version);
    }

    [Fact]
    public void MarksTheUnusedVersionWeakOnceAndNeverWritesThroughAHardLink()
    {
        var copy = Path.Combine(_dir, "libLibTorchSharp.so");
        File.Copy(Original(), copy);
        var link = Path.Combine(_dir, "link.so");
        using (var ln = Process.Start("ln", new[] { copy, link })!) { ln.WaitForExit(); Assert.Equal(0, ln.ExitCode); }
        var before = File.ReadAllBytes(copy);
        Assert.Equal(0, FlagsOf(link, "GLIBCXX_3.4.32") & Elf.VER_FLG_WEAK);

        var r = ElfPatcher.Patch(link, v => v == "GLIBCXX_3.4.32");
        Assert.Equal(new[] { "GLIBCXX_3.4.32" }, r.Patched);
        Assert.Equal(Elf.VER_FLG_WEAK, FlagsOf(link, "GLIBCXX_3.4.32") & Elf.VER_FLG_WEAK);
        Assert.Equal(before, File.ReadAllBytes(copy));                  // the other name still holds the original
        var patched = File.ReadAllBytes(link);
        Assert.Equal(before.Length, patched.Length);
        Assert.Equal(1, before.Zip(patched).Count(p => p.First != p.Second)); // one flag byte changed

        var again = ElfPatcher.Patch(link, v => v == "GLIBCXX_3.4.32");
        Assert.Empty(again.Patched);
        Assert.Equal("already patched", again.Note);
        Assert.Equal(patched, File.ReadAllBytes(link));
    }

    [Fact]
    public void RefusesToWeakenAVersionWhoseSymbolsAreUsed()
    {
        var copy = Path.Combine(_dir, "lib.so");
        File.Copy(Original(), copy);
        var before = File.ReadAllBytes(copy);
        var e = Assert.Throws<InvalidOperationException>(() => ElfPatcher.Patch(copy, v => v.StartsWith("GLIBCXX_")));
        Assert.Contains("really uses symbols of", e.Message);
        Assert.Equal(before, File.ReadAllBytes(copy));
    }

    [Fact]
    public void NothingToDoWhenEveryVersionIsAvailable()
    {
        var copy = Path.Combine(_dir, "lib.so");
        File.Copy(Original(), copy);
        var r = ElfPatcher.Patch(copy, _ => false);
        Assert.Empty(r.Patched);
        Assert.Equal("every required version is available", r.Note);
    }

    [Fact]
    public void CorruptFilesAreRejected()
    {
        var bad = Path.Combine(_dir, "bad.so");
        File.WriteAllBytes(bad, new byte[] { 1, 2, 3 });
        Assert.Throws<InvalidDataException>(() => ElfPatcher.Patch(bad, _ => true));
        var truncated = Path.Combine(_dir, "truncated.so");
        File.WriteAllBytes(truncated, File.ReadAllBytes(Original()).Take(4096).ToArray());
        var e = Assert.Throws<InvalidDataException>(() => ElfPatcher.Patch(truncated, _ => true));
        Assert.Contains("truncated or corrupt", e.Message);
    }

    [Fact]
    public void AnUnpatchedLibrarySaysWhatToDo()
    {
        var stdcxx = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";
        if (!File.Exists(stdcxx) || ElfPatcher.DefinedVersions(File.ReadAllBytes(stdcxx)).Contains("GLIBCXX_3.4.32"))
            return; // this system does not need the fix
        // libtorch itself must be in the process already (as in an app that loaded TorchSharp): otherwise the loader
        // stops at the copy's first missing dependency (libtorch.so, not next to the copy) before the symbol versions,
        // and whether it is depends on which test class ran first.
        using (var warm = TorchSharp.torch.zeros(1)) { }
        var copy = Path.Combine(_dir, "libLibTorchSharp.so");
        File.Copy(Original(), copy);
        var r = Core.Native.tryLoad(copy);
        Assert.True(r.IsError);
        Assert.Contains("GLIBCXX_3.4.32", r.ErrorValue);
        Assert.Contains("Rebuild with 'dotnet build'", r.ErrorValue);
        Assert.Contains("README.md", r.ErrorValue);
    }
}
