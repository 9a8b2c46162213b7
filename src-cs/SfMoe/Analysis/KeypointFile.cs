using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using SfMoe.Data;
using SkiaSharp;

namespace SfMoe.Analysis;

/// <summary>The keypoints of one image and, when known, the size of the image their coordinates refer to.</summary>
public sealed record ImageKeypoints(IReadOnlyList<Keypoint> Points, int? Width = null, int? Height = null);

/// <summary>
/// Part keypoints for images, as JSON: an object whose keys are image paths (with '/'; relative to the dataset or image
/// folder, or just the trailing components, e.g. <c>class/file.jpg</c> to cover that file in every environment) and
/// whose values map part names to <c>[x, y]</c> in pixels of the image (x right, y down). An optional <c>"_size": [width,
/// height]</c> gives the image size the coordinates were taken at, when the file on disk was resized since.
/// <code>
/// { "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg": { "_size": [500, 375], "beak": [312.0, 182.0], "tail": [...] } }
/// </code>
/// A dataset image matches the key that equals the longest trailing part of its path.
/// </summary>
public sealed class KeypointFile
{
    readonly Dictionary<string, ImageKeypoints> _images;

    /// <summary>Wraps keypoints by image key.</summary>
    public KeypointFile(IDictionary<string, ImageKeypoints> images)
    {
        _images = new Dictionary<string, ImageKeypoints>(StringComparer.Ordinal);
        foreach (var (k, v) in images) _images[Normalize(k)] = v;
    }

    /// <summary>Keypoints by image key.</summary>
    public IReadOnlyDictionary<string, ImageKeypoints> Images => _images;

    static string Normalize(string path) => path.Replace('\\', '/').Trim('/');

    /// <summary>The keypoints of an image file: the key equal to the longest trailing part of <paramref name="imagePath"/>.</summary>
    public ImageKeypoints? Find(string imagePath)
    {
        var parts = Normalize(imagePath).Split('/');
        for (int n = parts.Length; n >= 1; n--)
            if (_images.TryGetValue(string.Join('/', parts[^n..]), out var k)) return k;
        return null;
    }

    /// <summary>Reads a keypoint JSON file. Errors name the file and the key at fault.</summary>
    public static KeypointFile Load(string path)
    {
        if (!File.Exists(path)) throw new DatasetException($"keypoints file {path} not found");
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses keypoint JSON (see the class summary); <paramref name="source"/> names it in errors.</summary>
    public static KeypointFile Parse(string json, string source = "keypoints")
    {
        JsonNode? root;
        try { root = JsonNode.Parse(json); }
        catch (JsonException e) { throw new DatasetException($"{source}: not valid JSON ({e.Message})"); }
        if (root is not JsonObject obj) throw new DatasetException($"{source}: expected an object of image path -> {{part: [x, y]}}");
        var images = new Dictionary<string, ImageKeypoints>();
        foreach (var (key, value) in obj)
        {
            if (value is not JsonObject parts) throw new DatasetException($"{source}: \"{key}\": expected an object of part -> [x, y]");
            var pts = new List<Keypoint>();
            int? w = null, h = null;
            foreach (var (part, xy) in parts)
            {
                var (x, y) = Pair(xy, $"{source}: \"{key}\".\"{part}\"");
                if (part == "_size") { w = (int)x; h = (int)y; if (w < 1 || h < 1) throw new DatasetException($"{source}: \"{key}\"._size must be positive"); }
                else pts.Add(new Keypoint(part, (float)x, (float)y));
            }
            images[key] = new ImageKeypoints(pts, w, h);
        }
        return new KeypointFile(images);
    }

    static (double, double) Pair(JsonNode? n, string where)
    {
        if (n is JsonArray { Count: 2 } a && a[0] is JsonValue vx && a[1] is JsonValue vy &&
            vx.TryGetValue<double>(out var x) && vy.TryGetValue<double>(out var y) && double.IsFinite(x) && double.IsFinite(y))
            return (x, y);
        throw new DatasetException($"{where}: expected [x, y] (two numbers)");
    }

    /// <summary>Writes the keypoints as JSON (keys sorted).</summary>
    public void Save(string path)
    {
        var root = new JsonObject();
        foreach (var (key, v) in _images.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var o = new JsonObject();
            if (v.Width is int w && v.Height is int h) o["_size"] = new JsonArray(w, h);
            foreach (var p in v.Points) o[p.Part] = new JsonArray((double)p.X, (double)p.Y);
            root[key] = o;
        }
        AtomicFile.WriteAllText(path, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>
    /// Converts CUB-200-2011's part annotations (<c>images.txt</c>, <c>parts/parts.txt</c>, <c>parts/part_locs.txt</c> under
    /// <paramref name="cubRoot"/>) to keypoints keyed by <c>class/file.jpg</c>, which match the same image in every CUB-DG
    /// environment. Only visible parts are kept. When <c>images/</c> is there, each image's size is recorded as <c>_size</c>
    /// (read from the file header), so style-transferred copies of another size are scaled.
    /// </summary>
    public static KeypointFile FromCub(string cubRoot)
    {
        string F(string rel) => Path.Combine(cubRoot, rel);
        foreach (var f in new[] { "images.txt", "parts/parts.txt", "parts/part_locs.txt" })
            if (!File.Exists(F(f))) throw new DatasetException($"CUB-200-2011: {F(f)} not found (point at the CUB_200_2011 folder)");
        var paths = new Dictionary<int, string>();
        foreach (var (line, no) in File.ReadLines(F("images.txt")).Select((l, i) => (l.Trim(), i + 1)))
        {
            if (line.Length == 0) continue;
            var sp = line.Split(' ', 2);
            if (sp.Length != 2 || !int.TryParse(sp[0], out var id)) throw new DatasetException($"{F("images.txt")}:{no}: expected \"<id> <path>\"");
            paths[id] = sp[1].Trim();
        }
        var partNames = new Dictionary<int, string>();
        foreach (var (line, no) in File.ReadLines(F("parts/parts.txt")).Select((l, i) => (l.Trim(), i + 1)))
        {
            if (line.Length == 0) continue;
            var sp = line.Split(' ', 2);
            if (sp.Length != 2 || !int.TryParse(sp[0], out var id)) throw new DatasetException($"{F("parts/parts.txt")}:{no}: expected \"<id> <name>\"");
            partNames[id] = sp[1].Trim();
        }
        var points = new Dictionary<int, List<Keypoint>>();
        var inv = CultureInfo.InvariantCulture;
        foreach (var (line, no) in File.ReadLines(F("parts/part_locs.txt")).Select((l, i) => (l.Trim(), i + 1)))
        {
            if (line.Length == 0) continue;
            var sp = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (sp.Length != 5 || !int.TryParse(sp[0], out var img) || !int.TryParse(sp[1], out var part) ||
                !double.TryParse(sp[2], NumberStyles.Float, inv, out var x) || !double.TryParse(sp[3], NumberStyles.Float, inv, out var y) ||
                !double.TryParse(sp[4], NumberStyles.Float, inv, out var vis))
                throw new DatasetException($"{F("parts/part_locs.txt")}:{no}: expected \"<image id> <part id> <x> <y> <visible>\"");
            if (vis < 0.5) continue;
            if (!partNames.TryGetValue(part, out var name)) throw new DatasetException($"{F("parts/part_locs.txt")}:{no}: unknown part id {part}");
            if (!points.TryGetValue(img, out var list)) points[img] = list = [];
            list.Add(new Keypoint(name, (float)x, (float)y));
        }
        var images = new Dictionary<string, ImageKeypoints>();
        foreach (var (id, list) in points)
        {
            if (!paths.TryGetValue(id, out var rel)) throw new DatasetException($"{F("parts/part_locs.txt")}: image id {id} is not in images.txt");
            int? w = null, h = null;
            var file = Path.Combine(cubRoot, "images", rel);
            if (File.Exists(file))
            {
                using var codec = SKCodec.Create(file);
                if (codec is not null) { w = codec.Info.Width; h = codec.Info.Height; }
            }
            images[rel] = new ImageKeypoints(list, w, h);
        }
        return new KeypointFile(images);
    }
}
