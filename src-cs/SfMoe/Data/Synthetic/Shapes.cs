using SkiaSharp;

namespace SfMoe.Data;

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
