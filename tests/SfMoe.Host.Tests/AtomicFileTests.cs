using System.IO;
using Xunit;

namespace SfMoe.Host.Tests;

public class AtomicFileTests
{
    static string NewDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "sfmoe-atomic-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }

    [Fact]
    public void Replaces_the_file_creates_its_folder_and_leaves_no_temporary_file()
    {
        var dir = NewDir();
        try
        {
            var path = Path.Combine(dir, "sub", "a.json");
            AtomicFile.WriteAllText(path, "old");
            AtomicFile.WriteAllText(path, "new ü");
            Assert.Equal("new ü", File.ReadAllText(path));
            Assert.Equal(new byte[] { (byte)'n', (byte)'e', (byte)'w', (byte)' ', 0xC3, 0xBC }, File.ReadAllBytes(path)); // UTF-8, no BOM
            Assert.Equal(new[] { "a.json" }, Directory.GetFiles(Path.Combine(dir, "sub")).Select(Path.GetFileName));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void A_failed_write_keeps_what_was_there_and_removes_its_temporary_file()
    {
        var dir = NewDir();
        try
        {
            // The target is a folder holding a file: the rename fails, and the folder and its file stay as they were.
            var target = Path.Combine(dir, "out.png");
            Directory.CreateDirectory(target);
            File.WriteAllText(Path.Combine(target, "keep.txt"), "kept");
            Assert.ThrowsAny<IOException>(() => AtomicFile.WriteAllBytes(target, new byte[] { 1, 2, 3 }));
            Assert.Equal("kept", File.ReadAllText(Path.Combine(target, "keep.txt")));
            Assert.Empty(Directory.GetFiles(dir));
        }
        finally { Directory.Delete(dir, true); }
    }
}
