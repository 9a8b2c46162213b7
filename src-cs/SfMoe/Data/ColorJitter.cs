using SfMoe.Imaging;

namespace SfMoe.Data;

/// <summary>One draw of torchvision's ColorJitter: the order of the four adjustments and their factors.</summary>
/// <param name="Order">A permutation of 0 (brightness), 1 (contrast), 2 (saturation), 3 (hue): the order they are applied in.</param>
/// <param name="Brightness">Brightness factor, or null to skip the adjustment.</param>
/// <param name="Contrast">Contrast factor, or null to skip.</param>
/// <param name="Saturation">Saturation factor, or null to skip.</param>
/// <param name="Hue">Hue shift in [-0.5, 0.5] (a fraction of the hue circle), or null to skip.</param>
public sealed record ColorJitterParams(IReadOnlyList<int> Order, double? Brightness, double? Contrast, double? Saturation, double? Hue);

// torchvision's ColorJitter: the random order and factors, and the adjustments applied in that order.
public static partial class Transforms
{
    /// <summary>torchvision's ColorJitter.get_params: a random order, then the four factors (see the class remarks).</summary>
    public static ColorJitterParams SampleColorJitter(Random rng, double brightness = 0.3, double contrast = 0.3, double saturation = 0.3, double hue = 0.3)
    {
        ArgumentNullException.ThrowIfNull(rng);
        if (brightness < 0 || contrast < 0 || saturation < 0) throw new ArgumentException("jitter strengths must be non-negative");
        if (!(hue >= 0 && hue <= 0.5)) throw new ArgumentOutOfRangeException(nameof(hue), hue, "hue jitter must be in [0, 0.5]");
        var order = new[] { 0, 1, 2, 3 };
        for (int i = 3; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }
        double? Factor(double s) => s == 0 ? null : Uniform(rng, Math.Max(0, 1 - s), 1 + s);
        double? b = Factor(brightness), c = Factor(contrast), sat = Factor(saturation);
        double? h = hue == 0 ? null : Uniform(rng, -hue, hue);
        return new ColorJitterParams(order, b, c, sat, h);
    }

    /// <summary>torchvision's ColorJitter.forward with a given draw: the adjustments in <see cref="ColorJitterParams.Order"/>.</summary>
    public static ImageU8 ColorJitter(ImageU8 img, ColorJitterParams p)
    {
        ArgumentNullException.ThrowIfNull(p);
        PilColor.CheckColor(img);
        var order = p.Order;
        if (order.Count != 4 || order.Distinct().Count() != 4 || order.Any(i => i is < 0 or > 3))
            throw new ArgumentException($"order must be a permutation of 0..3, got [{string.Join(", ", order)}]");
        foreach (int op in order)
            img = op switch
            {
                0 when p.Brightness is double f => AdjustBrightness(img, f),
                1 when p.Contrast is double f => AdjustContrast(img, f),
                2 when p.Saturation is double f => AdjustSaturation(img, f),
                3 when p.Hue is double f => AdjustHue(img, f),
                _ => img,
            };
        return img;
    }
}
