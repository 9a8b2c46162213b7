using System.IO.Compression;
using System.Text.Json;

namespace SfMoe.Data;

// How each dataset's unpacked archives become DomainBed's folder layout.
public static partial class Downloader
{
    static string Layout(DatasetDownload recipe, List<string> archives, string tmp, IProgress<DownloadProgress>? progress,
        List<string> warnings, CancellationToken cancel)
    {
        string extract = Path.Combine(tmp, "extract");
        Directory.CreateDirectory(extract);
        switch (recipe.Layout)
        {
            case ArchiveLayout.RawFiles:
            {
                string raw = Path.Combine(extract, "raw");
                Directory.CreateDirectory(raw);
                foreach (var a in archives)
                {
                    string name = Path.GetFileName(a);
                    File.Copy(a, Path.Combine(raw, name));
                    if (name.EndsWith(".gz", StringComparison.OrdinalIgnoreCase))
                    {
                        progress?.Report(new("extract", name, 0, null));
                        using var gz = new GZipStream(File.OpenRead(a), CompressionMode.Decompress);
                        using var o = File.Create(Path.Combine(raw, name[..^3]));
                        gz.CopyTo(o);
                    }
                }
                return extract;
            }
            case ArchiveLayout.RenameTopFolder:
            {
                foreach (var a in archives) Extract(a, extract, progress, cancel);
                string top = Path.Combine(extract, recipe.TopFolder!);
                if (!Directory.Exists(top))
                    throw new DatasetException(
                        $"{recipe.Dataset}: the archive has no folder {recipe.TopFolder}/ (it holds: " +
                        $"{string.Join(", ", Directory.EnumerateFileSystemEntries(extract).Select(Path.GetFileName).Take(10))})");
                return top;
            }
            case ArchiveLayout.MergeInto:
            {
                foreach (var a in archives) Extract(a, extract, progress, cancel);
                if (recipe.Dataset == "DomainNet") RemoveDomainNetDuplicates(extract, progress);
                return extract;
            }
            case ArchiveLayout.TerraIncognita:
            {
                foreach (var a in archives) Extract(a, extract, progress, cancel);
                string result = Path.Combine(tmp, "result");
                BuildTerraIncognita(extract, result, progress, warnings);
                return result;
            }
            default: throw new ArgumentOutOfRangeException(nameof(recipe), recipe.Layout, "unknown layout");
        }
    }

    /// <summary>The DomainNet files DomainBed deletes after unpacking (paths relative to domain_net/, '/'-separated).</summary>
    public static IReadOnlyList<string> DomainNetDuplicates()
    {
        using var s = typeof(Downloader).Assembly.GetManifestResourceStream("SfMoe.Data.domain_net_duplicates.txt.gz")
            ?? throw new InvalidOperationException("embedded resource domain_net_duplicates.txt.gz is missing");
        using var gz = new GZipStream(s, CompressionMode.Decompress);
        using var reader = new StreamReader(gz);
        var list = new List<string>();
        string? line;
        while ((line = reader.ReadLine()) is not null)
            if (line.Trim().Length > 0) list.Add(line.Trim());
        return list;
    }

    static void RemoveDomainNetDuplicates(string root, IProgress<DownloadProgress>? progress)
    {
        int removed = 0;
        foreach (var rel in DomainNetDuplicates())
        {
            var p = Path.Combine(root, rel.Replace('/', Path.DirectorySeparatorChar));
            if (File.Exists(p)) { File.Delete(p); removed++; }
        }
        progress?.Report(new("layout", "domain_net", removed, null, $"DomainNet: removed {removed} duplicate images (DomainBed's list)"));
    }

    static readonly string[] TerraLocations = ["38", "46", "100", "43"];
    static readonly string[] TerraCategories = ["bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel"];
    static readonly string[] TerraAnnotationFiles =
        ["cis_test_annotations.json", "cis_val_annotations.json", "train_annotations.json", "trans_test_annotations.json", "trans_val_annotations.json"];

    /// <summary>
    /// DomainBed's TerraIncognita: the Caltech Camera Traps images of locations 38, 46, 100 and 43, sorted into
    /// <c>location_&lt;loc&gt;/&lt;category&gt;/&lt;file&gt;</c> for the ten categories, from the five annotation files merged.
    /// An image with annotations of two categories goes into both folders, as in DomainBed.
    /// </summary>
    static void BuildTerraIncognita(string extract, string result, IProgress<DownloadProgress>? progress, List<string> warnings)
    {
        string images = Path.Combine(extract, "eccv_18_all_images_sm");
        string annotations = Path.Combine(extract, "eccv_18_annotation_files");
        if (!Directory.Exists(images)) throw new DatasetException($"TerraIncognita: the images archive has no folder eccv_18_all_images_sm/");
        var categories = new Dictionary<string, string>();
        var imageList = new List<(string Id, string Location, string File)>();
        var annotationsOf = new Dictionary<string, List<string>>();
        foreach (var f in TerraAnnotationFiles)
        {
            string path = Path.Combine(annotations, f);
            if (!File.Exists(path)) throw new DatasetException($"TerraIncognita: annotation file {f} is missing from eccv_18_annotations.tar.gz");
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = doc.RootElement;
            foreach (var c in root.GetProperty("categories").EnumerateArray())
                categories[Key(c.GetProperty("id"))] = c.GetProperty("name").GetString()!;
            foreach (var im in root.GetProperty("images").EnumerateArray())
                imageList.Add((Key(im.GetProperty("id")), Key(im.GetProperty("location")), im.GetProperty("file_name").GetString()!));
            foreach (var a in root.GetProperty("annotations").EnumerateArray())
            {
                string id = Key(a.GetProperty("image_id"));
                if (!annotationsOf.TryGetValue(id, out var list)) annotationsOf[id] = list = [];
                list.Add(Key(a.GetProperty("category_id")));
            }
        }
        var copies = new List<(string Src, string Dst)>();
        Directory.CreateDirectory(result);
        foreach (var (id, location, fileName) in imageList)
        {
            if (Array.IndexOf(TerraLocations, location) < 0) continue;
            string locFolder = Path.Combine(result, "location_" + location);
            Directory.CreateDirectory(locFolder);
            if (!annotationsOf.TryGetValue(id, out var cats)) continue;
            foreach (var catId in cats)
            {
                string category = categories.TryGetValue(catId, out var n) ? n : catId;
                if (Array.IndexOf(TerraCategories, category) < 0) continue;
                copies.Add((Path.Combine(images, fileName), Path.Combine(locFolder, category, fileName)));
            }
        }
        // move each source on its last use, copy it before
        var lastUse = new Dictionary<string, int>();
        for (int i = 0; i < copies.Count; i++) lastUse[copies[i].Src] = i;
        int missing = 0;
        var warned = new HashSet<string>();
        for (int i = 0; i < copies.Count; i++)
        {
            var (src, dst) = copies[i];
            if (!File.Exists(src))
            {
                missing++;
                if (warned.Add(src)) warnings.Add($"TerraIncognita: annotated image {Path.GetFileName(src)} is not in the images archive");
                continue;
            }
            Directory.CreateDirectory(Path.GetDirectoryName(dst)!);
            if (lastUse[src] == i) File.Move(src, dst, overwrite: true); else File.Copy(src, dst, overwrite: true);
            if (i % 5000 == 0) progress?.Report(new("layout", "terra_incognita", i, copies.Count));
        }
        progress?.Report(new("layout", "terra_incognita", copies.Count, copies.Count,
            $"TerraIncognita: {copies.Count - missing} images sorted into {TerraLocations.Length} locations" + (missing > 0 ? $", {missing} missing" : "")));

        static string Key(JsonElement e) => e.ValueKind == JsonValueKind.String ? e.GetString()! : e.GetRawText();
    }
}
