using System.Formats.Tar;
using System.IO.Compression;

namespace SfMoe.Data;

// Archive extraction for Downloader: zip and tar(.gz), entries confined to the target folder.
public static partial class Downloader
{
    /// <summary>Unpacks a .zip, .tar.gz / .tgz or .tar into <paramref name="into"/>, refusing entries that would land outside it.</summary>
    public static void Extract(string archive, string into, IProgress<DownloadProgress>? progress = null, CancellationToken cancel = default)
    {
        string name = Path.GetFileName(archive);
        string root = Path.GetFullPath(into) + Path.DirectorySeparatorChar;
        string Safe(string entry)
        {
            string full = Path.GetFullPath(Path.Combine(root, entry.Replace('\\', '/')));
            if (!full.StartsWith(root, StringComparison.Ordinal) && full + Path.DirectorySeparatorChar != root)
                throw new DatasetException($"{name}: entry {entry} would be written outside {into}; refusing the archive");
            return full;
        }
        long count = 0;
        try
        {
            if (name.EndsWith(".zip", StringComparison.OrdinalIgnoreCase))
            {
                using var zip = ZipFile.OpenRead(archive);
                foreach (var e in zip.Entries)
                {
                    cancel.ThrowIfCancellationRequested();
                    string path = Safe(e.FullName);
                    if (e.FullName.EndsWith('/') || e.FullName.EndsWith('\\')) { Directory.CreateDirectory(path); continue; }
                    Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                    e.ExtractToFile(path, overwrite: true);
                    if (++count % 1000 == 0) progress?.Report(new("extract", name, count, zip.Entries.Count));
                }
            }
            else if (name.EndsWith(".tar.gz", StringComparison.OrdinalIgnoreCase) || name.EndsWith(".tgz", StringComparison.OrdinalIgnoreCase)
                     || name.EndsWith(".tar", StringComparison.OrdinalIgnoreCase))
            {
                using var file = File.OpenRead(archive);
                using Stream s = name.EndsWith(".tar", StringComparison.OrdinalIgnoreCase) ? file : new GZipStream(file, CompressionMode.Decompress);
                using var tar = new TarReader(s);
                TarEntry? e;
                while ((e = tar.GetNextEntry()) is not null)
                {
                    cancel.ThrowIfCancellationRequested();
                    string path = Safe(e.Name);
                    switch (e.EntryType)
                    {
                        case TarEntryType.Directory:
                            Directory.CreateDirectory(path);
                            break;
                        case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                            e.ExtractToFile(path, overwrite: true);
                            break;
                        default:
                            progress?.Report(new("warning", name, count, null, $"{name}: skipped {e.EntryType} entry {e.Name}"));
                            break;
                    }
                    if (++count % 1000 == 0) progress?.Report(new("extract", name, count, null));
                }
            }
            else throw new DatasetException($"{name}: unknown archive type (expected .zip, .tar.gz, .tgz or .tar)");
        }
        catch (Exception ex) when (ex is InvalidDataException or EndOfStreamException or FormatException)
        {
            throw new DatasetException($"{name}: the archive is damaged: {ex.Message}", ex);
        }
        progress?.Report(new("extract", name, count, count));
    }
}
