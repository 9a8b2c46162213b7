using System.IO;
using System.Text;

namespace SfMoe;

/// <summary>
/// The one writer of whole files: readers see either the old file or the complete new one, never a half-written one.
/// It creates the folder, writes to a temporary file beside the target, flushes it to disk and renames it over the
/// target. A failed write leaves the target as it was and removes the temporary file. Every output file of SfMoe
/// (model files, training states, results, reports, plots, sweep manifests, exports) goes through it; the core's
/// format writers write to the stream it gives them.
/// </summary>
internal static class AtomicFile
{
    /// <summary>Writes <paramref name="path"/> with <paramref name="write"/>, which gets a stream to fill.</summary>
    public static void Write(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full) ?? ".";
        Directory.CreateDirectory(dir);
        var tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    public static void WriteAllBytes(string path, byte[] bytes) => Write(path, s => s.Write(bytes));

    /// <summary>UTF-8 without a byte-order mark, as File.WriteAllText.</summary>
    public static void WriteAllText(string path, string text) =>
        WriteAllBytes(path, new UTF8Encoding(false).GetBytes(text));
}
