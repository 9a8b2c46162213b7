using SfMoe.Imaging;
using SkiaSharp;

namespace SfMoe.Data;

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
