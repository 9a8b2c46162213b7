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

/// <summary>The seven shapes in unit coordinates (centre at the origin, up = -y, within radius 1.05) and their part points.</summary>
internal static class Shapes
{
    static SKPoint P(float x, float y) => new(x, y);

    static SKPoint Polar(float radius, float degrees)
    {
        float a = degrees * MathF.PI / 180f;
        return new SKPoint(radius * MathF.Cos(a), radius * MathF.Sin(a));
    }

    static readonly SKPoint[] Arrow = [P(0, -1), P(0.6f, -0.25f), P(0.2f, -0.25f), P(0.2f, 0.95f), P(-0.2f, 0.95f), P(-0.2f, -0.25f), P(-0.6f, -0.25f)];
    static readonly SKPoint[] Square = [P(-0.72f, -0.72f), P(0.72f, -0.72f), P(0.72f, 0.72f), P(-0.72f, 0.72f)];
    static readonly SKPoint[] Triangle = [Polar(1, -90), Polar(1, 30), Polar(1, 150)];
    static readonly SKPoint[] Star = Enumerable.Range(0, 10).Select(i => Polar(i % 2 == 0 ? 1f : 0.42f, -90 + 36 * i)).ToArray();
    const float CrossW = 0.27f, CrossL = 0.95f;
    static readonly SKPoint[] Cross =
    [
        P(-CrossW, -CrossL), P(CrossW, -CrossL), P(CrossW, -CrossW), P(CrossL, -CrossW), P(CrossL, CrossW), P(CrossW, CrossW),
        P(CrossW, CrossL), P(-CrossW, CrossL), P(-CrossW, CrossW), P(-CrossL, CrossW), P(-CrossL, -CrossW), P(-CrossW, -CrossW),
    ];
    // Heart: four cubic Béziers from the notch round the left lobe to the tip and back round the right lobe.
    static readonly SKPoint[] Heart =
    [
        P(0, -0.35f),
        P(-0.15f, -0.85f), P(-0.95f, -0.75f), P(-0.9f, -0.2f),
        P(-0.85f, 0.25f), P(-0.35f, 0.55f), P(0, 0.92f),
        P(0.35f, 0.55f), P(0.85f, 0.25f), P(0.9f, -0.2f),
        P(0.95f, -0.75f), P(0.15f, -0.85f), P(0, -0.35f),
    ];

    static SKPoint Bezier(SKPoint p0, SKPoint p1, SKPoint p2, SKPoint p3, float t)
    {
        float u = 1 - t;
        float a = u * u * u, b = 3 * u * u * t, c = 3 * u * t * t, d = t * t * t;
        return new SKPoint(a * p0.X + b * p1.X + c * p2.X + d * p3.X, a * p0.Y + b * p1.Y + c * p2.Y + d * p3.Y);
    }

    /// <summary>The outline of class <paramref name="label"/> in unit coordinates (a new path; the caller disposes it).</summary>
    public static SKPath Path(int label)
    {
        var path = new SKPath();
        switch (label)
        {
            case 0: path.AddPoly(Arrow, close: true); break;
            case 1: path.AddCircle(0, 0, 0.85f); break;
            case 2: path.AddPoly(Cross, close: true); break;
            case 3:
                path.MoveTo(Heart[0]);
                for (int i = 1; i < Heart.Length; i += 3) path.CubicTo(Heart[i], Heart[i + 1], Heart[i + 2]);
                path.Close();
                break;
            case 4: path.AddPoly(Square, close: true); break;
            case 5: path.AddPoly(Star, close: true); break;
            case 6: path.AddPoly(Triangle, close: true); break;
            default: throw new ArgumentOutOfRangeException(nameof(label));
        }
        return path;
    }

    /// <summary>The part points of class <paramref name="label"/> (in the order of SyntheticDataset.PartNames, without the background).</summary>
    public static SKPoint[] PartPoints(int label) => label switch
    {
        0 => [P(0, 0), Arrow[0], Arrow[6], Arrow[1], P(0, 0.95f)],
        1 => [P(0, 0), P(0, -0.85f), P(0.85f, 0), P(0, 0.85f), P(-0.85f, 0)],
        2 => [P(0, 0), P(0, -CrossL), P(CrossL, 0), P(0, CrossL), P(-CrossL, 0)],
        3 => [P(0, 0.05f), Heart[6], Bezier(Heart[0], Heart[1], Heart[2], Heart[3], 0.5f),
              Bezier(Heart[9], Heart[10], Heart[11], Heart[12], 0.5f), Heart[0]],
        4 => [P(0, 0), .. Square],
        5 => [P(0, 0), Star[0], Star[2], Star[4], Star[6], Star[8]],
        6 => [P(0, 0), .. Triangle],
        _ => throw new ArgumentOutOfRangeException(nameof(label)),
    };
}

/// <summary>Draws a <see cref="Sample"/> in its domain's style. One bitmap and canvas per thread and size.</summary>
internal static class Renderer
{
    [ThreadStatic] static SKBitmap? t_bitmap;
    [ThreadStatic] static SKCanvas? t_canvas;

    static SKCanvas CanvasFor(int size, out SKBitmap bitmap)
    {
        if (t_bitmap is null || t_bitmap.Width != size)
        {
            t_canvas?.Dispose();
            t_bitmap?.Dispose();
            t_bitmap = new SKBitmap(new SKImageInfo(size, size, SKColorType.Rgba8888, SKAlphaType.Premul));
            t_canvas = new SKCanvas(t_bitmap);
        }
        bitmap = t_bitmap;
        return t_canvas!;
    }

    public static ImageU8 Render(Sample s, int size)
    {
        var canvas = CanvasFor(size, out var bitmap);
        var rng = new SplitMix(s.StyleSeed);
        float scale = size / 64f;   // style constants are tuned at 64 px
        using var unit = Shapes.Path(s.Label);
        using var shape = new SKPath(unit);
        shape.Transform(s.Matrix);
        int noise;
        float[] gain = [1, 1, 1];
        canvas.Save();
        canvas.ResetMatrix();
        switch (s.Domain)
        {
            case "cartoon": Cartoon(canvas, shape, s, size, scale, ref rng); noise = 0; break;
            case "painting": Painting(canvas, shape, s, size, scale, ref rng, gain); noise = 18; break;
            case "photo": Photo(canvas, shape, s, size, scale, ref rng); noise = 6; break;
            case "sketch": Sketch(canvas, unit, s, size, scale, ref rng); noise = 4; break;
            default: throw new InvalidOperationException(s.Domain);
        }
        canvas.Restore();
        canvas.Flush();
        return Finish(bitmap, ref rng, noise, gain, s.Domain == "sketch");
    }

    static SKColor Hsv(double h, double s, double v, byte a = 255) =>
        SKColor.FromHsv((float)(((h % 360) + 360) % 360), (float)(Math.Clamp(s, 0, 1) * 100), (float)(Math.Clamp(v, 0, 1) * 100), a);

    static SKColor Mix(SKColor a, SKColor b, float t) => new(
        (byte)(a.Red + (b.Red - a.Red) * t), (byte)(a.Green + (b.Green - a.Green) * t), (byte)(a.Blue + (b.Blue - a.Blue) * t), 255);

    static void Cartoon(SKCanvas canvas, SKPath shape, Sample s, int size, float scale, ref SplitMix rng)
    {
        double bgHue = rng.Uniform(0, 360);
        var bg = Hsv(bgHue, rng.Uniform(0.2, 0.45), rng.Uniform(0.9, 1.0));
        canvas.Clear(bg);
        // polka dots on a jittered grid
        using (var dot = new SKPaint { IsAntialias = true, Color = Hsv(bgHue + rng.Uniform(-30, 30), rng.Uniform(0.3, 0.6), rng.Uniform(0.75, 0.95)) })
        {
            float step = (float)rng.Uniform(9, 14) * scale, rad = (float)rng.Uniform(1.0, 1.8) * scale;
            float ox = (float)rng.Uniform(0, step), oy = (float)rng.Uniform(0, step);
            for (float y = oy; y < size; y += step)
                for (float x = ox + ((int)((y - oy) / step) % 2) * step / 2; x < size; x += step)
                    canvas.DrawCircle(x, y, rad, dot);
        }
        var fill = Hsv(rng.Uniform(0, 360), rng.Uniform(0.75, 1.0), rng.Uniform(0.85, 1.0));
        using (var p = new SKPaint { IsAntialias = true, Color = fill, Style = SKPaintStyle.Fill })
            canvas.DrawPath(shape, p);
        // highlight: a white ellipse near the top left, clipped to the shape
        canvas.Save();
        canvas.ClipPath(shape, SKClipOperation.Intersect, antialias: true);
        var c = s.Matrix.MapPoint(0, 0);
        using (var hl = new SKPaint { IsAntialias = true, Color = new SKColor(255, 255, 255, 110) })
            canvas.DrawOval(c.X - s.Radius * 0.35f, c.Y - s.Radius * 0.4f, s.Radius * 0.32f, s.Radius * 0.18f, hl);
        canvas.Restore();
        using (var outline = new SKPaint
        {
            IsAntialias = true, Color = new SKColor(15, 15, 20), Style = SKPaintStyle.Stroke,
            StrokeWidth = Math.Max(1.8f * scale, s.Radius * (float)rng.Uniform(0.11, 0.15)), StrokeJoin = SKStrokeJoin.Round,
        })
            canvas.DrawPath(shape, outline);
    }

    static void Painting(SKCanvas canvas, SKPath shape, Sample s, int size, float scale, ref SplitMix rng, float[] gain)
    {
        double baseHue = rng.Uniform(0, 360);
        canvas.Clear(Hsv(baseHue, rng.Uniform(0.4, 0.8), rng.Uniform(0.5, 0.9)));
        using var brush = new SKPaint { IsAntialias = true, Style = SKPaintStyle.Stroke, StrokeCap = SKStrokeCap.Round };
        for (int i = 0; i < 40; i++)
        {
            float x = (float)rng.Uniform(-4, size + 4), y = (float)rng.Uniform(-4, size + 4);
            float len = (float)rng.Uniform(0.12, 0.35) * size, a = (float)rng.Uniform(0, Math.PI);
            brush.StrokeWidth = (float)rng.Uniform(2.5, 6) * scale;
            brush.Color = Hsv(baseHue + rng.Uniform(-50, 50), rng.Uniform(0.35, 0.9), rng.Uniform(0.35, 0.95), (byte)rng.Uniform(110, 200));
            canvas.DrawLine(x, y, x + len * MathF.Cos(a), y + len * MathF.Sin(a), brush);
        }
        double objHue = baseHue + rng.Uniform(70, 290);   // keep the shape's hue away from the background's
        using (var fill = new SKPaint { IsAntialias = true, Color = Hsv(objHue, rng.Uniform(0.6, 1.0), rng.Uniform(0.55, 1.0)) })
            canvas.DrawPath(shape, fill);
        canvas.Save();
        canvas.ClipPath(shape, SKClipOperation.Intersect, antialias: true);
        var bounds = shape.Bounds;
        float dir = (float)rng.Uniform(0, Math.PI);
        for (int i = 0; i < 26; i++)
        {
            float x = (float)rng.Uniform(bounds.Left, bounds.Right), y = (float)rng.Uniform(bounds.Top, bounds.Bottom);
            float len = s.Radius * (float)rng.Uniform(0.4, 0.9), a = dir + (float)rng.Uniform(-0.35, 0.35);
            brush.StrokeWidth = Math.Max(1.5f * scale, s.Radius * (float)rng.Uniform(0.12, 0.25));
            brush.Color = Hsv(objHue + rng.Uniform(-28, 28), rng.Uniform(0.5, 1.0), rng.Uniform(0.45, 1.0), (byte)rng.Uniform(130, 220));
            canvas.DrawLine(x - len / 2 * MathF.Cos(a), y - len / 2 * MathF.Sin(a), x + len / 2 * MathF.Cos(a), y + len / 2 * MathF.Sin(a), brush);
        }
        canvas.Restore();
        for (int c = 0; c < 3; c++) gain[c] = (float)rng.Uniform(0.75, 1.25);
    }

    static void Photo(SKCanvas canvas, SKPath shape, Sample s, int size, float scale, ref SplitMix rng)
    {
        // sky and ground: two muted gradients split at a horizon
        float horizon = (float)rng.Uniform(0.45, 0.8) * size;
        double skyHue = rng.Uniform(0, 360), groundHue = rng.Uniform(0, 360);
        using (var sky = new SKPaint
        {
            Shader = SKShader.CreateLinearGradient(new SKPoint(0, 0), new SKPoint((float)rng.Uniform(-0.3, 0.3) * size, horizon),
                [Hsv(skyHue, rng.Uniform(0.05, 0.3), rng.Uniform(0.75, 0.98)), Hsv(skyHue + 20, rng.Uniform(0.05, 0.35), rng.Uniform(0.55, 0.85))],
                null, SKShaderTileMode.Clamp),
        })
            canvas.DrawRect(0, 0, size, horizon, sky);
        using (var ground = new SKPaint
        {
            Shader = SKShader.CreateLinearGradient(new SKPoint(0, horizon), new SKPoint(0, size),
                [Hsv(groundHue, rng.Uniform(0.1, 0.4), rng.Uniform(0.45, 0.75)), Hsv(groundHue + 15, rng.Uniform(0.15, 0.45), rng.Uniform(0.25, 0.5))],
                null, SKShaderTileMode.Clamp),
        })
            canvas.DrawRect(0, horizon, size, size - horizon, ground);
        // soft shadow, then the shaded object lit from the top left
        using (var shadowPath = new SKPath(shape))
        {
            shadowPath.Offset(s.Radius * 0.10f, s.Radius * 0.12f);
            using var shadow = new SKPaint
            {
                IsAntialias = true, Color = new SKColor(0, 0, 0, 95),
                MaskFilter = SKMaskFilter.CreateBlur(SKBlurStyle.Normal, Math.Max(0.6f, s.Radius * 0.07f)),
            };
            canvas.DrawPath(shadowPath, shadow);
        }
        var baseColor = Hsv(rng.Uniform(0, 360), rng.Uniform(0.45, 0.9), rng.Uniform(0.55, 0.9));
        var c = s.Matrix.MapPoint(0, 0);
        using (var fill = new SKPaint
        {
            IsAntialias = true,
            Shader = SKShader.CreateRadialGradient(new SKPoint(c.X - s.Radius * 0.4f, c.Y - s.Radius * 0.45f), s.Radius * 1.7f,
                [Mix(baseColor, SKColors.White, 0.55f), baseColor, Mix(baseColor, SKColors.Black, 0.6f)], [0f, 0.45f, 1f],
                SKShaderTileMode.Clamp),
        })
            canvas.DrawPath(shape, fill);
        _ = scale;
    }

    static void Sketch(SKCanvas canvas, SKPath unit, Sample s, int size, float scale, ref SplitMix rng)
    {
        byte paper = (byte)rng.Uniform(232, 252);
        canvas.Clear(new SKColor(paper, paper, (byte)Math.Clamp(paper + rng.Uniform(-10, 4), 0, 255)));
        byte ink = (byte)rng.Uniform(15, 75);
        using var pen = new SKPaint
        {
            IsAntialias = true, Style = SKPaintStyle.Stroke, Color = new SKColor(ink, ink, ink, 215),
            StrokeWidth = (float)rng.Uniform(0.9, 1.4) * scale, StrokeCap = SKStrokeCap.Round, StrokeJoin = SKStrokeJoin.Round,
        };
        SKPath? first = null;
        for (int pass = 0; pass < 2; pass++)
        {
            // each pass: the shape slightly re-scaled, re-rotated and shifted, like a hand going over it twice
            var jitter = SKMatrix.Concat(
                SKMatrix.CreateTranslation((float)rng.Uniform(-0.8, 0.8) * scale, (float)rng.Uniform(-0.8, 0.8) * scale),
                SKMatrix.Concat(s.Matrix, SKMatrix.Concat(SKMatrix.CreateRotationDegrees((float)rng.Uniform(-3, 3)),
                    SKMatrix.CreateScale((float)rng.Uniform(0.96, 1.04), (float)rng.Uniform(0.96, 1.04)))));
            var p = new SKPath(unit);
            p.Transform(jitter);
            canvas.DrawPath(p, pen);
            if (first is null) first = p; else p.Dispose();
        }
        if (rng.Chance(0.6))
        {
            canvas.Save();
            canvas.ClipPath(first!, SKClipOperation.Intersect, antialias: true);
            using var hatch = new SKPaint
            {
                IsAntialias = true, Style = SKPaintStyle.Stroke, Color = new SKColor(ink, ink, ink, 120), StrokeWidth = 0.6f * scale,
            };
            float a = (float)rng.Uniform(0, Math.PI), step = (float)rng.Uniform(2.8, 4.2) * scale;
            float dx = MathF.Cos(a), dy = MathF.Sin(a);
            float diag = size * 1.5f;
            for (float t = -diag; t <= diag; t += step)
            {
                float px = size / 2f - dy * t, py = size / 2f + dx * t;
                canvas.DrawLine(px - dx * diag, py - dy * diag, px + dx * diag, py + dy * diag, hatch);
            }
            canvas.Restore();
        }
        first?.Dispose();
    }

    /// <summary>RGBA to RGB with per-channel gain and noise (uniform in ±noise; the same on all channels for grey sketches).</summary>
    static ImageU8 Finish(SKBitmap bitmap, ref SplitMix rng, int noise, float[] gain, bool monochromeNoise)
    {
        var src = bitmap.GetPixelSpan();
        int n = bitmap.Width * bitmap.Height;
        var rgb = new byte[n * 3];
        bool plain = noise == 0 && gain[0] == 1 && gain[1] == 1 && gain[2] == 1;
        ulong bits = 0;
        int avail = 0;
        int span = 2 * noise + 1;
        for (int i = 0; i < n; i++)
        {
            if (plain)
            {
                rgb[3 * i] = src[4 * i]; rgb[3 * i + 1] = src[4 * i + 1]; rgb[3 * i + 2] = src[4 * i + 2];
                continue;
            }
            int shared = 0;
            for (int c = 0; c < 3; c++)
            {
                int delta = 0;
                if (noise > 0 && (c == 0 || !monochromeNoise))
                {
                    if (avail < 16) { bits = rng.NextUInt64(); avail = 64; }
                    delta = (int)((bits & 0xffff) * (uint)span >> 16) - noise;
                    bits >>= 16; avail -= 16;
                    shared = delta;
                }
                else if (monochromeNoise) delta = shared;
                int v = (int)(src[4 * i + c] * gain[c] + 0.5f) + delta;
                rgb[3 * i + c] = (byte)Math.Clamp(v, 0, 255);
            }
        }
        return new ImageU8(bitmap.Height, bitmap.Width, 3, rgb);
    }
}
