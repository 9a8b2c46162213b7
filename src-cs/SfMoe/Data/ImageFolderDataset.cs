using SfMoe.Imaging;

namespace SfMoe.Data;

/// <summary>
/// A dataset in DomainBed's image-folder layout, <c>root/&lt;env&gt;/&lt;class&gt;/**/*.(jpg|jpeg|png|...)</c>, read as DomainBed
/// does (one torchvision ImageFolder per environment): environments and classes are the sorted sub-folder names
/// (sorted by Unicode code point, as Python's sorted()), files are collected per class in the order of
/// <c>sorted(os.walk(class_dir, followlinks=True))</c> and sorted file names, extensions matched case-insensitively.
/// Sample indices therefore equal DomainBed's, and so do its splits (<see cref="Splits.EnvSplit"/>).
/// </summary>
/// <remarks>
/// Unlike DomainBed, the class list must be the same in every environment (DomainBed would silently shift labels),
/// and a class folder without image files is an error (as in torchvision's ImageFolder). Files that cannot be decoded
/// are not checked here: <see cref="IDomainEnvironment.Load"/> throws <see cref="ImageLoadException"/> for them and
/// the loader skips them.
/// </remarks>
public sealed class ImageFolderDataset : IMultiDomainDataset
{
    /// <summary>
    /// File extensions taken as images (lower case): torchvision's IMG_EXTENSIONS (.jpg .jpeg .png .ppm .bmp .pgm .tif
    /// .tiff .webp) plus .gif. Matching torchvision keeps sample indices equal to DomainBed's; a file the decoder cannot
    /// read is skipped at load time, not dropped from the index.
    /// </summary>
    public static readonly IReadOnlyList<string> ImageExtensions =
        [".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"];

    readonly ImageFolderEnvironment[] _envs;

    ImageFolderDataset(DatasetSpec spec, ImageFolderEnvironment[] envs) { Spec = spec; _envs = envs; }

    /// <inheritdoc/>
    public DatasetSpec Spec { get; }

    /// <inheritdoc/>
    public IReadOnlyList<IDomainEnvironment> Environments => _envs;

    /// <summary>The root folder (the one holding the environment folders).</summary>
    public string Root { get; private init; } = "";

    /// <summary>
    /// Scans <paramref name="root"/>. <paramref name="template"/> gives the name, steps, checkpoint frequency, channels,
    /// size and preprocessing; environments and classes come from the folders. Throws <see cref="SfMoeException"/>
    /// naming the folder at fault when the layout is not DomainBed's.
    /// </summary>
    public static ImageFolderDataset Open(string root, DatasetSpec template, Func<string, ImageU8> decode)
    {
        ArgumentNullException.ThrowIfNull(decode);
        string name = template.Name;
        root = Path.GetFullPath(root);
        if (!Directory.Exists(root))
            throw new DatasetException($"{name}: dataset folder {root} not found");
        var envNames = SubfolderNames(root);
        if (envNames.Count == 0)
            throw new DatasetException($"{name}: {root} has no environment folders (expected {root}/<environment>/<class>/<images>)");

        string[]? classes = null;
        string? classesFrom = null;
        var envs = new ImageFolderEnvironment[envNames.Count];
        for (int e = 0; e < envNames.Count; e++)
        {
            string envDir = Path.Combine(root, envNames[e]);
            var found = SubfolderNames(envDir);
            if (found.Count == 0)
                throw new DatasetException($"{name}: environment folder {envDir} is empty (expected one folder per class)");
            if (classes is null) { classes = [.. found]; classesFrom = envNames[e]; }
            else
            {
                foreach (var c in classes)
                    if (!found.Contains(c))
                        throw new DatasetException(
                            $"{name}: class folder '{c}' is missing in environment '{envNames[e]}' ({Path.Combine(envDir, c)}); " +
                            $"every environment needs the same classes ('{c}' is in '{classesFrom}')");
                foreach (var c in found)
                    if (Array.IndexOf(classes, c) < 0)
                        throw new DatasetException(
                            $"{name}: class folder '{c}' is missing in environment '{classesFrom}' ({Path.Combine(root, classesFrom!, c)}); " +
                            $"every environment needs the same classes ('{c}' is in '{envNames[e]}')");
            }
            var paths = new List<string>();
            var labels = new List<int>();
            for (int k = 0; k < classes.Length; k++)
            {
                string classDir = Path.Combine(envDir, classes[k]);
                int before = paths.Count;
                CollectImages(classDir, paths);
                if (paths.Count == before)
                    throw new DatasetException(
                        $"{name}: no image files ({string.Join(" ", ImageExtensions)}) in {classDir}");
                for (int i = before; i < paths.Count; i++) labels.Add(k);
            }
            envs[e] = new ImageFolderEnvironment(envNames[e], [.. paths], [.. labels], decode);
        }
        var spec = template with { Environments = envNames, Classes = classes! };
        return new ImageFolderDataset(spec, envs) { Root = root };
    }

    /// <summary>Names of the sub-folders (symbolic links to folders included), sorted as Python sorts strings.</summary>
    internal static List<string> SubfolderNames(string dir)
    {
        var names = new List<string>();
        foreach (var d in new DirectoryInfo(dir).EnumerateDirectories())
            names.Add(d.Name);
        names.Sort(PyStringComparer.Instance);
        return names;
    }

    /// <summary>The image files under <paramref name="classDir"/> in torchvision's order (see the class summary).</summary>
    static void CollectImages(string classDir, List<string> into)
    {
        // sorted(os.walk(dir)) orders directories by their full path string; all share the prefix, so sort the
        // relative suffixes ("" for the class folder itself, "/a", "/a/b", ...) by code point.
        var dirs = new List<(string Key, string Path)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        Walk(classDir, "", dirs, seen);
        dirs.Sort((a, b) => PyStringComparer.Instance.Compare(a.Key, b.Key));
        var files = new List<string>();
        foreach (var (_, dir) in dirs)
        {
            files.Clear();
            foreach (var f in Directory.EnumerateFiles(dir))
            {
                string fn = Path.GetFileName(f);
                if (IsImageFile(fn)) files.Add(fn);
            }
            files.Sort(PyStringComparer.Instance);
            foreach (var fn in files) into.Add(Path.Combine(dir, fn));
        }
    }

    static void Walk(string dir, string key, List<(string, string)> dirs, HashSet<string> seen)
    {
        // os.walk(followlinks=True) would loop forever on a link cycle; visit each real folder once.
        string real = new DirectoryInfo(dir).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? Path.GetFullPath(dir);
        if (!seen.Add(real)) return;
        dirs.Add((key, dir));
        foreach (var sub in new DirectoryInfo(dir).EnumerateDirectories())
            Walk(sub.FullName, key + "/" + sub.Name, dirs, seen);
    }

    /// <summary>Whether a file name ends with one of <see cref="ImageExtensions"/>, ignoring case.</summary>
    public static bool IsImageFile(string fileName)
    {
        foreach (var ext in ImageExtensions)
            if (fileName.EndsWith(ext, StringComparison.OrdinalIgnoreCase)) return true;
        return false;
    }
}

/// <summary>One environment of an image folder: file paths and labels; images are decoded on demand.</summary>
sealed class ImageFolderEnvironment(string name, string[] paths, int[] labels, Func<string, ImageU8> decode) : IDomainEnvironment
{
    public string Name { get; } = name;
    public int Count => paths.Length;
    public int LabelOf(int index) => labels[index];
    public string SourceOf(int index) => paths[index];
    public IReadOnlyList<Keypoint>? KeypointsOf(int index) { _ = paths[index]; return null; }

    public ImageU8 Load(int index)
    {
        string path = paths[index];
        try { return decode(path); }
        catch (ImageLoadException) { throw; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException
                                      or ArgumentException or NotSupportedException or InvalidOperationException)
        {
            throw new ImageLoadException(path, e.Message, e);
        }
    }
}

/// <summary>Orders strings by Unicode code point, as Python's sorted() does (ordinal UTF-16 order differs for astral characters).</summary>
internal sealed class PyStringComparer : IComparer<string>
{
    /// <summary>The comparer.</summary>
    public static readonly PyStringComparer Instance = new();

    /// <inheritdoc/>
    public int Compare(string? x, string? y)
    {
        if (ReferenceEquals(x, y)) return 0;
        if (x is null) return -1;
        if (y is null) return 1;
        int n = Math.Min(x.Length, y.Length);
        for (int i = 0; i < n; i++)
        {
            char a = x[i], b = y[i];
            if (a == b) continue;
            bool sa = char.IsSurrogate(a), sb = char.IsSurrogate(b);
            // A surrogate stands for a code point above U+FFFF, greater than any BMP character.
            if (sa == sb) return a.CompareTo(b);
            return sa ? 1 : -1;
        }
        return x.Length.CompareTo(y.Length);
    }
}
