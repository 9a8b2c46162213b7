using System.Text;
using System.Text.Json;
using SfMoe.Imaging;
using SkiaSharp;

namespace SfMoe.Data;

/// <summary>Settings of <see cref="SyntheticDataset"/>.</summary>
public sealed record SyntheticOptions
{
    /// <summary>Image side in pixels (default 64, at least 16).</summary>
    public int Size { get; init; } = 64;
    /// <summary>Images per environment (default 1600); classes take turns (label = index mod 7).</summary>
    public int ImagesPerEnvironment { get; init; } = 1600;
    /// <summary>Seed; the same seed renders the same images.</summary>
    public int Seed { get; init; }
}

/// <summary>
/// A procedural multi-domain dataset that needs no files: 7 shapes (the label) drawn in 4 styles (the domains) with
/// SkiaSharp. Shape is the only thing that predicts the label; position, scale (radius 24-40% of the side), rotation
/// (±45°), colours and textures are random per image, and the domains differ in style:
/// <list type="bullet">
/// <item><c>cartoon</c>: flat pastel background with a dot pattern, flat saturated shape, thick black outline, a highlight;</item>
/// <item><c>painting</c>: background of semi-transparent brush strokes, the shape filled with strokes of shifted hues, no outline,
/// a colour cast and strong colour noise;</item>
/// <item><c>photo</c>: sky/ground gradients with sensor noise, a shaded (radial-gradient) shape with a soft drop shadow;</item>
/// <item><c>sketch</c>: off-white paper, the outline drawn twice with jitter in dark strokes, optional hatching, no fill.</item>
/// </list>
/// Each image carries keypoints (<see cref="PartNames"/>): the shape's centre, named vertices or ends, and two background
/// points, in pixel coordinates of the stored image (x right, y down; pixel (i, j) covers [i, i+1) x [j, j+1)).
/// </summary>
/// <remarks>
/// Deterministic: sample (env, i) is drawn from its own generator seeded by (seed, env, i), so images render in any
/// order, on any thread, to the same bytes (on a given SkiaSharp build and CPU; Skia may choose different SIMD code
/// on other CPUs, which could change anti-aliased edge pixels). Rendering is thread-safe (one canvas per thread).
/// </remarks>
public sealed class SyntheticDataset : IMultiDomainDataset
{
    /// <summary>Domain (environment) names in index order (sorted, so a written copy reopens in the same order).</summary>
    public static readonly IReadOnlyList<string> Domains = ["cartoon", "painting", "photo", "sketch"];

    /// <summary>Class names in label order (sorted).</summary>
    public static readonly IReadOnlyList<string> Classes = ["arrow", "circle", "cross", "heart", "square", "star", "triangle"];

    /// <summary>The spec with the default options: 64x64 RGB, 3001 steps, evaluation every 500: a small SF-MoE learns it in
    /// about three minutes on 2 CPU cores (held-out accuracy well above chance; README).</summary>
    public static readonly DatasetSpec DefaultSpec = MakeSpec(new SyntheticOptions());

    static DatasetSpec MakeSpec(SyntheticOptions o) =>
        new("Synthetic", "synthetic", Domains, Classes, 3, o.Size, o.Size, 3001, 500, Preprocess.ImageNet);

    static readonly string[][] Parts =
    [
        ["center", "tip", "barb_1", "barb_2", "tail"],                       // arrow (points up before rotation)
        ["center", "rim_1", "rim_2", "rim_3", "rim_4"],                      // circle: top, right, bottom, left
        ["center", "arm_1", "arm_2", "arm_3", "arm_4"],                      // cross: ends of the top, right, bottom, left arms
        ["center", "tip", "lobe_1", "lobe_2", "notch"],                      // heart: bottom tip, left/right lobe tops, top dip
        ["center", "corner_1", "corner_2", "corner_3", "corner_4"],          // square: top-left, clockwise
        ["center", "tip_1", "tip_2", "tip_3", "tip_4", "tip_5"],             // star: top, clockwise
        ["center", "tip_1", "tip_2", "tip_3"],                               // triangle: top, clockwise
    ];

    /// <summary>Names of the background keypoints every image carries after its shape's parts.</summary>
    public static readonly IReadOnlyList<string> BackgroundParts = ["background_1", "background_2"];

    /// <summary>
    /// The keypoint names of class <paramref name="classIndex"/>, in the order <see cref="Keypoints"/> returns them: the
    /// shape's parts (numbered clockwise from the top as drawn before rotation), then <see cref="BackgroundParts"/>.
    /// </summary>
    public static IReadOnlyList<string> PartNames(int classIndex) => [.. Parts[classIndex], .. BackgroundParts];

    readonly Env[] _envs;

    /// <summary>Creates the dataset (nothing is rendered until asked).</summary>
    public SyntheticDataset(SyntheticOptions? options = null)
    {
        Options = options ?? new SyntheticOptions();
        if (Options.Size < 16) throw new DatasetException($"synthetic dataset: size must be at least 16 pixels, got {Options.Size}");
        if (Options.ImagesPerEnvironment < 1)
            throw new DatasetException($"synthetic dataset: images per environment must be at least 1, got {Options.ImagesPerEnvironment}");
        Spec = MakeSpec(Options);
        _envs = Domains.Select((d, e) => new Env(this, d, e)).ToArray();
    }

    /// <summary>The options.</summary>
    public SyntheticOptions Options { get; }
    /// <inheritdoc/>
    public DatasetSpec Spec { get; }
    /// <inheritdoc/>
    public IReadOnlyList<IDomainEnvironment> Environments => _envs;

    /// <summary>Label of sample i (any environment): i mod 7.</summary>
    public static int LabelOf(int index) => index % Classes.Count;

    /// <summary>Renders sample <paramref name="index"/> of environment <paramref name="env"/> (RGB, Size x Size).</summary>
    public ImageU8 Render(int env, int index) => Renderer.Render(Describe(env, index), Options.Size);

    /// <summary>Keypoints of sample <paramref name="index"/> of environment <paramref name="env"/> (no rendering needed).</summary>
    public IReadOnlyList<Keypoint> Keypoints(int env, int index) => Describe(env, index).Keypoints;

    /// <summary>
    /// Writes the dataset in DomainBed's layout, <c>root/&lt;domain&gt;/&lt;class&gt;/&lt;domain&gt;_&lt;index&gt;.png</c>, plus
    /// <c>root/keypoints.jsonl</c> (one line per image: path relative to root, label, keypoints). Renders in parallel.
    /// </summary>
    public void WriteImageFolder(string root)
    {
        Directory.CreateDirectory(root);
        var lines = new string[_envs.Length][];
        for (int e = 0; e < _envs.Length; e++)
        {
            foreach (var c in Classes) Directory.CreateDirectory(Path.Combine(root, Domains[e], c));
            int env = e;
            lines[e] = new string[Options.ImagesPerEnvironment];
            Parallel.For(0, Options.ImagesPerEnvironment, i =>
            {
                var s = Describe(env, i);
                string rel = $"{Domains[env]}/{Classes[s.Label]}/{Domains[env]}_{i:D5}.png";
                ImageFiles.WritePreviewPng(Renderer.Render(s, Options.Size), Path.Combine(root, rel));
                lines[env][i] = JsonSerializer.Serialize(new
                {
                    path = rel, label = s.Label,
                    keypoints = s.Keypoints.Select(k => new { part = k.Part, x = Math.Round(k.X, 3), y = Math.Round(k.Y, 3) }),
                });
            });
        }
        File.WriteAllLines(Path.Combine(root, "keypoints.jsonl"), lines.SelectMany(l => l), new UTF8Encoding(false));
    }

    /// <summary>Everything random about one sample, drawn from its own generator.</summary>
    internal Sample Describe(int env, int index)
    {
        if ((uint)env >= (uint)_envs.Length) throw new ArgumentOutOfRangeException(nameof(env), env, "no such environment");
        if ((uint)index >= (uint)Options.ImagesPerEnvironment)
            throw new ArgumentOutOfRangeException(nameof(index), index, $"environment has {Options.ImagesPerEnvironment} samples");
        var rng = new SplitMix(Options.Seed, env, index);
        int label = LabelOf(index);
        float size = Options.Size;
        float r = size * (float)rng.Uniform(0.24, 0.40);
        const float extent = 1.05f;   // every shape lies within 1.05 r of its centre
        float margin = r * extent + size / 64f;
        float cx = (float)rng.Uniform(margin, size - margin), cy = (float)rng.Uniform(margin, size - margin);
        float angle = (float)rng.Uniform(-45, 45);
        var matrix = SKMatrix.Concat(SKMatrix.CreateTranslation(cx, cy),
            SKMatrix.Concat(SKMatrix.CreateRotationDegrees(angle), SKMatrix.CreateScale(r, r)));
        var unitParts = Shapes.PartPoints(label);
        var kps = new List<Keypoint>(unitParts.Length + 2);
        for (int k = 0; k < unitParts.Length; k++)
        {
            var p = matrix.MapPoint(unitParts[k]);
            kps.Add(new Keypoint(Parts[label][k], p.X, p.Y));
        }
        for (int b = 0; b < BackgroundParts.Count; b++)
        {
            float bx, by;
            int tries = 0;
            do
            {
                bx = (float)rng.Uniform(0.5, size - 0.5);
                by = (float)rng.Uniform(0.5, size - 0.5);
            } while (Hypot(bx - cx, by - cy) < 1.3f * r && ++tries < 64);
            if (tries >= 64)   // no free spot (huge shape): take the corner farthest from the centre
            {
                bx = cx < size / 2 ? size - 1 : 1;
                by = cy < size / 2 ? size - 1 : 1;
            }
            kps.Add(new Keypoint(BackgroundParts[b], bx, by));
        }
        return new Sample(env, index, label, Domains[env], matrix, r, rng.NextUInt64(), kps);
    }

    static float Hypot(float x, float y) => MathF.Sqrt(x * x + y * y);

    sealed class Env(SyntheticDataset owner, string name, int index) : IDomainEnvironment
    {
        public string Name { get; } = name;
        public int Count => owner.Options.ImagesPerEnvironment;
        public int LabelOf(int i) => i >= 0 && i < Count ? SyntheticDataset.LabelOf(i) : throw new ArgumentOutOfRangeException(nameof(i));
        public string SourceOf(int i) => $"synthetic:{Name}/{i}";
        public ImageU8 Load(int i) => owner.Render(index, i);
        public IReadOnlyList<Keypoint>? KeypointsOf(int i) => owner.Keypoints(index, i);
    }
}

/// <summary>One sample's geometry: unit shape to pixels, the radius in pixels, the seed of its style, its keypoints.</summary>
internal sealed record Sample(int Env, int Index, int Label, string Domain, SKMatrix Matrix, float Radius, ulong StyleSeed,
    IReadOnlyList<Keypoint> Keypoints);

/// <summary>SplitMix64: a small, fast generator; seeded from (seed, env, index) so each sample has its own stream.</summary>
internal struct SplitMix
{
    ulong _s;

    public SplitMix(ulong seed) { _s = seed; }

    public SplitMix(int seed, int env, int index)
    {
        _s = 0x5F3759DF_2545F491UL;
        _s = Mix((ulong)(uint)seed ^ _s);
        _s = Mix((ulong)(uint)env ^ _s);
        _s = Mix((ulong)(uint)index ^ _s);
    }

    static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong NextUInt64()
    {
        _s += 0x9E3779B97F4A7C15UL;
        ulong z = _s;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    public double Uniform(double lo, double hi) => lo + (hi - lo) * NextDouble();

    public int Next(int n) => (int)(NextDouble() * n);

    public bool Chance(double p) => NextDouble() < p;
}
