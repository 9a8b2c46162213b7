// Marks unavailable GLIBCXX symbol-version requirements of an ELF shared library as WEAK, so that
// glibc's loader accepts a libstdc++ that lacks them. Compiled by MSBuild (RoslynCodeTaskFactory)
// from build/TorchSharpNative.targets; it needs no tool beyond the .NET SDK.
//
// Why: TorchSharp 0.107's libLibTorchSharp.so was linked by GCC 13 and requires GLIBCXX_3.4.32, which
// Debian 12's libstdc++ (GLIBCXX_3.4.30) lacks. The only symbol under that version
// (std::ios_base_library_init) is never relocated against, i.e. never called. See
// shared/reference/platform.md. The patch is refused when a symbol of a missing version is actually
// referenced by a relocation: then the library really needs the newer runtime.
//
// Safety: never writes the input in place (it may be a hard link into the NuGet cache): writes a
// temporary file next to it and renames it over. Idempotent: a patched file is left as it is.
#nullable enable
using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text;
#if !SFMOE_ELF_TESTS
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public class PatchElfVersionNeeds : Task
{
    /// <summary>The folders to search for the library, e.g. $(OutDir) or $(PublishDir).</summary>
    [Required] public string[] Folders { get; set; } = Array.Empty<string>();
    /// <summary>File name of the library to patch.</summary>
    public string LibraryName { get; set; } = "libLibTorchSharp.so";

    public override bool Execute()
    {
        var stdcxx = FindSystemLibStdCxx();
        if (stdcxx == null)
        {
            Log.LogMessage(MessageImportance.Normal, "SfMoe native fix: no system libstdc++.so.6 found; nothing to check.");
            return true;
        }
        var available = ReadDefinedVersionStrings(File.ReadAllBytes(stdcxx));
        foreach (var folder in Folders.Where(Directory.Exists).Distinct())
        {
            foreach (var rel in new[] { LibraryName, Path.Combine("runtimes", "linux-x64", "native", LibraryName) })
            {
                var path = Path.Combine(folder, rel);
                if (!File.Exists(path)) continue;
                try
                {
                    var result = ElfPatcher.Patch(path, v => v.StartsWith("GLIBCXX_") && !available.Contains(v));
                    if (result.Patched.Count > 0)
                        Log.LogMessage(MessageImportance.High,
                            $"SfMoe native fix: {path}: marked {string.Join(", ", result.Patched)} weak ({stdcxx} lacks them).");
                    else
                        Log.LogMessage(MessageImportance.Low, $"SfMoe native fix: {path}: nothing to do ({result.Note}).");
                }
                catch (Exception e)
                {
                    Log.LogError($"SfMoe native fix failed on {path}: {e.Message} TorchSharp will not load on this system; "
                        + "see README.md, section 'Native library on Debian 12'.");
                    return false;
                }
            }
        }
        return !Log.HasLoggedErrors;
    }

    static string? FindSystemLibStdCxx()
    {
        foreach (var p in new[] { "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
                                  "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6",
                                  "/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6" })
            if (File.Exists(p)) return p;
        return null;
    }

    static HashSet<string> ReadDefinedVersionStrings(byte[] elf) => ElfPatcher.DefinedVersions(elf);
}
#endif

public static class ElfPatcher
{
    [DllImport("libc", SetLastError = true)]
    static extern int rename(string oldpath, string newpath);

    /// <summary>Version names a library defines, read from its .gnu.version_d section.</summary>
    public static HashSet<string> DefinedVersions(byte[] elf)
    {
        var e = new Elf(elf);
        var set = new HashSet<string>();
        foreach (var sec in e.Sections.Where(s => s.Type == Elf.SHT_GNU_verdef))
        {
            var strtab = e.Sections[(int)sec.Link];
            long off = sec.Offset;
            for (uint i = 0; i < sec.Info; i++)
            {
                ushort cnt = e.U16(off + 4);
                uint aux = e.U32(off + 12), next = e.U32(off + 16);
                long a = off + aux;
                for (int j = 0; j < cnt; j++)
                {
                    set.Add(e.Str(strtab.Offset + e.U32(a)));
                    a += e.U32(a + 4);
                }
                if (next == 0) break;
                off += next;
            }
        }
        return set;
    }

    /// <summary>Set VER_FLG_WEAK on every needed version that `missing` selects, unless a relocated symbol needs it.</summary>
    public static PatchResult Patch(string path, Func<string, bool> missing)
    {
        var bytes = File.ReadAllBytes(path);
        var e = new Elf(bytes);
        var result = new PatchResult();
        var verneed = e.Sections.FirstOrDefault(s => s.Type == Elf.SHT_GNU_verneed);
        if (verneed == null) { result.Note = "no version requirements"; return result; }
        var strtab = e.Sections[(int)verneed.Link];
        var targets = new List<(long flagsAt, ushort index, string name, ushort flags)>();
        long off = verneed.Offset;
        for (uint i = 0; i < verneed.Info; i++)
        {
            ushort cnt = e.U16(off + 2);
            uint aux = e.U32(off + 8), next = e.U32(off + 12);
            long a = off + aux;
            for (int j = 0; j < cnt; j++)
            {
                ushort flags = e.U16(a + 4), other = e.U16(a + 6);
                string name = e.Str(strtab.Offset + e.U32(a + 8));
                if (missing(name)) targets.Add((a + 4, other, name, flags));
                a += e.U32(a + 12);
            }
            if (next == 0) break;
            off += next;
        }
        var todo = targets.Where(t => (t.flags & Elf.VER_FLG_WEAK) == 0).ToList();
        if (targets.Count == 0) { result.Note = "every required version is available"; return result; }
        if (todo.Count == 0) { result.Note = "already patched"; return result; }

        // Refuse if any relocation references a dynamic symbol whose version is one of those we would weaken.
        var used = RelocatedVersionIndices(e);
        var needed = todo.Where(t => used.Contains(t.index)).Select(t => t.name).ToList();
        if (needed.Count > 0)
            throw new InvalidOperationException(
                $"it really uses symbols of {string.Join(", ", needed)}, which this system's libstdc++ lacks; "
                + "install a newer libstdc++ (GCC 13 or later) or use a TorchSharp build linked against this system's");

        var stamp = File.GetLastWriteTimeUtc(path);
        var tmp = path + ".sfmoe-tmp";
        File.Copy(path, tmp, true);   // a fresh file with the same permissions; never write through a hard link
        using (var fs = new FileStream(tmp, FileMode.Open, FileAccess.Write))
        {
            foreach (var t in todo)
            {
                var f = (ushort)(t.flags | Elf.VER_FLG_WEAK);
                fs.Seek(t.flagsAt, SeekOrigin.Begin);
                fs.WriteByte((byte)(f & 0xff));
                fs.WriteByte((byte)(f >> 8));
                result.Patched.Add(t.name);
            }
        }
        // Keep the source's timestamp so MSBuild's incremental copy does not recopy the unpatched file.
        File.SetLastWriteTimeUtc(tmp, stamp);
        if (rename(tmp, path) != 0)   // atomic replace
        {
            File.Delete(tmp);
            throw new IOException($"could not rename {tmp} over {path} (errno {Marshal.GetLastWin32Error()})");
        }
        return result;
    }

    static HashSet<ushort> RelocatedVersionIndices(Elf e)
    {
        var set = new HashSet<ushort>();
        var versym = e.Sections.FirstOrDefault(s => s.Type == Elf.SHT_GNU_versym);
        if (versym == null) return set;
        foreach (var rel in e.Sections.Where(s => s.Type == Elf.SHT_RELA || s.Type == Elf.SHT_REL))
        {
            long entsize = rel.EntSize != 0 ? (long)rel.EntSize : (rel.Type == Elf.SHT_RELA ? 24 : 16);
            for (long p = rel.Offset; p + entsize <= rel.Offset + (long)rel.Size; p += entsize)
            {
                ulong info = e.U64(p + 8);
                uint sym = (uint)(info >> 32);
                if (sym == 0) continue;
                ushort v = (ushort)(e.U16(versym.Offset + 2L * sym) & 0x7fff);
                set.Add(v);
            }
        }
        return set;
    }
}

public sealed class PatchResult
{
    public List<string> Patched { get; } = new();
    public string Note { get; set; } = "";
}

/// <summary>Minimal little-endian ELF64 reader (section headers only).</summary>
public sealed class Elf
{
    public const uint SHT_REL = 9, SHT_RELA = 4, SHT_GNU_verdef = 0x6ffffffd, SHT_GNU_verneed = 0x6ffffffe, SHT_GNU_versym = 0x6fffffff;
    public const ushort VER_FLG_WEAK = 0x2;
    public sealed class Section
    {
        public Section(uint type, long offset, ulong size, uint link, uint info, ulong entSize)
        { Type = type; Offset = offset; Size = size; Link = link; Info = info; EntSize = entSize; }
        public uint Type { get; }
        public long Offset { get; }
        public ulong Size { get; }
        public uint Link { get; }
        public uint Info { get; }
        public ulong EntSize { get; }
    }
    readonly byte[] b;
    public List<Section> Sections { get; } = new();

    public Elf(byte[] bytes)
    {
        b = bytes;
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F')
            throw new InvalidDataException("not an ELF file");
        if (b[4] != 2 || b[5] != 1) throw new InvalidDataException("not a little-endian 64-bit ELF file");
        long shoff = (long)U64(0x28);
        ushort shentsize = U16(0x3A), shnum = U16(0x3C);
        if (shoff <= 0 || shentsize < 64 || shoff + (long)shentsize * shnum > b.Length)
            throw new InvalidDataException("truncated or corrupt section header table");
        for (int i = 0; i < shnum; i++)
        {
            long h = shoff + (long)i * shentsize;
            var s = new Section(U32(h + 4), (long)U64(h + 24), U64(h + 32), U32(h + 40), U32(h + 44), U64(h + 56));
            if (s.Type != 8 /* NOBITS */ && s.Offset + (long)s.Size > b.Length)
                throw new InvalidDataException($"section {i} lies beyond the end of the file");
            Sections.Add(s);
        }
    }
    public ushort U16(long o) => BitConverter.ToUInt16(b, (int)o);
    public uint U32(long o) => BitConverter.ToUInt32(b, (int)o);
    public ulong U64(long o) => BitConverter.ToUInt64(b, (int)o);
    public string Str(long o)
    {
        int end = (int)o;
        while (end < b.Length && b[end] != 0) end++;
        return Encoding.ASCII.GetString(b, (int)o, end - (int)o);
    }
}
