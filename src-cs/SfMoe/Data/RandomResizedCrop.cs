using SfMoe.Imaging;

namespace SfMoe.Data;

/// <summary>A crop rectangle: rows <c>Top .. Top+Height-1</c>, columns <c>Left .. Left+Width-1</c>.</summary>
/// <param name="Top">First row.</param>
/// <param name="Left">First column.</param>
/// <param name="Height">Rows.</param>
/// <param name="Width">Columns.</param>
public readonly record struct CropBox(int Top, int Left, int Height, int Width);

// torchvision's RandomResizedCrop: the crop's random draw and the crop + bilinear resize.
public static partial class Transforms
{
    /// <summary>
    /// torchvision's <c>RandomResizedCrop.get_params</c>: up to 10 attempts of area = U(scale) · H·W and aspect ratio
    /// exp(U(ln ratio)), w = round(sqrt(area · ratio)), h = round(sqrt(area / ratio)) (round half to even, as Python),
    /// accepted when 0 &lt; w ≤ W and 0 &lt; h ≤ H, with top and left uniform integers; otherwise a centre crop with the
    /// image's aspect ratio clamped to the ratio range.
    /// </summary>
    public static CropBox SampleCrop(int height, int width, Random rng,
        double scaleMin = 0.7, double scaleMax = 1.0, double ratioMin = 3.0 / 4.0, double ratioMax = 4.0 / 3.0)
    {
        ArgumentNullException.ThrowIfNull(rng);
        if (height <= 0 || width <= 0) throw new ArgumentException($"image size must be positive, got {height}x{width}");
        if (!(scaleMin >= 0 && scaleMin <= scaleMax)) throw new ArgumentException($"scale range must satisfy 0 <= min <= max, got ({scaleMin}, {scaleMax})");
        if (!(ratioMin > 0 && ratioMin <= ratioMax)) throw new ArgumentException($"ratio range must satisfy 0 < min <= max, got ({ratioMin}, {ratioMax})");
        double area = (double)height * width;
        double logMin = Math.Log(ratioMin), logMax = Math.Log(ratioMax);
        for (int attempt = 0; attempt < 10; attempt++)
        {
            double targetArea = area * Uniform(rng, scaleMin, scaleMax);
            double aspect = Math.Exp(Uniform(rng, logMin, logMax));
            int w = (int)Math.Round(Math.Sqrt(targetArea * aspect), MidpointRounding.ToEven);
            int h = (int)Math.Round(Math.Sqrt(targetArea / aspect), MidpointRounding.ToEven);
            if (w > 0 && w <= width && h > 0 && h <= height)
            {
                int top = rng.Next(height - h + 1);
                int left = rng.Next(width - w + 1);
                return new CropBox(top, left, h, w);
            }
        }
        double inRatio = (double)width / height;
        int cw, ch;
        if (inRatio < ratioMin) { cw = width; ch = (int)Math.Round(cw / ratioMin, MidpointRounding.ToEven); }
        else if (inRatio > ratioMax) { ch = height; cw = (int)Math.Round(ch * ratioMax, MidpointRounding.ToEven); }
        else { cw = width; ch = height; }
        return new CropBox((height - ch) / 2, (width - cw) / 2, ch, cw);
    }

    /// <summary>torchvision's <c>RandomResizedCrop((height, width), scale, ratio)</c> on PIL (bilinear): <see cref="SampleCrop"/> then <see cref="ResizedCrop"/>.</summary>
    public static ImageU8 RandomResizedCrop(ImageU8 img, int height, int width, Random rng,
        double scaleMin = 0.7, double scaleMax = 1.0, double ratioMin = 3.0 / 4.0, double ratioMax = 4.0 / 3.0)
    {
        ArgumentNullException.ThrowIfNull(img);
        var box = SampleCrop(img.Height, img.Width, rng, scaleMin, scaleMax, ratioMin, ratioMax);
        return PilResample.ResizeRegion(img, box.Top, box.Left, box.Height, box.Width, height, width);
    }
}
