using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace SfMoe.Data;

/// <summary>A crop rectangle: rows <c>Top .. Top+Height-1</c>, columns <c>Left .. Left+Width-1</c>.</summary>
/// <param name="Top">First row.</param>
/// <param name="Left">First column.</param>
/// <param name="Height">Rows.</param>
/// <param name="Width">Columns.</param>
public readonly record struct CropBox(int Top, int Left, int Height, int Width);

/// <summary>One draw of torchvision's ColorJitter: the order of the four adjustments and their factors.</summary>
/// <param name="Order">A permutation of 0 (brightness), 1 (contrast), 2 (saturation), 3 (hue): the order they are applied in.</param>
/// <param name="Brightness">Brightness factor, or null to skip the adjustment.</param>
/// <param name="Contrast">Contrast factor, or null to skip.</param>
/// <param name="Saturation">Saturation factor, or null to skip.</param>
/// <param name="Hue">Hue shift in [-0.5, 0.5] (a fraction of the hue circle), or null to skip.</param>
public sealed record ColorJitterParams(IReadOnlyList<int> Order, double? Brightness, double? Contrast, double? Saturation, double? Hue);

/// <summary>All random choices of one pass of the DomainBed train transform.</summary>
/// <param name="Crop">The RandomResizedCrop rectangle in the input image.</param>
/// <param name="Flip">Whether the image is flipped left-right.</param>
/// <param name="Jitter">The ColorJitter draw.</param>
/// <param name="Grayscale">Whether the image is made grey (3 equal channels).</param>
public sealed record TrainParams(CropBox Crop, bool Flip, ColorJitterParams Jitter, bool Grayscale);

/// <summary>
/// The ranges and probabilities of the train augmentation. The defaults are DomainBed's:
/// <c>RandomResizedCrop(224, scale=(0.7, 1.0))</c>, <c>RandomHorizontalFlip()</c>, <c>ColorJitter(0.3, 0.3, 0.3, 0.3)</c>,
/// <c>RandomGrayscale()</c> (p = 0.1).
/// </summary>
public sealed record AugmentOptions
{
    /// <summary>Smallest fraction of the image area a crop covers.</summary>
    public double ScaleMin { get; init; } = 0.7;
    /// <summary>Largest fraction of the image area a crop covers.</summary>
    public double ScaleMax { get; init; } = 1.0;
    /// <summary>Smallest crop aspect ratio (width / height).</summary>
    public double RatioMin { get; init; } = 3.0 / 4.0;
    /// <summary>Largest crop aspect ratio (width / height).</summary>
    public double RatioMax { get; init; } = 4.0 / 3.0;
    /// <summary>Probability of a horizontal flip.</summary>
    public double FlipProbability { get; init; } = 0.5;
    /// <summary>Brightness jitter: factor drawn from U[max(0, 1 - b), 1 + b]; 0 turns it off.</summary>
    public double Brightness { get; init; } = 0.3;
    /// <summary>Contrast jitter: factor drawn from U[max(0, 1 - c), 1 + c]; 0 turns it off.</summary>
    public double Contrast { get; init; } = 0.3;
    /// <summary>Saturation jitter: factor drawn from U[max(0, 1 - s), 1 + s]; 0 turns it off.</summary>
    public double Saturation { get; init; } = 0.3;
    /// <summary>Hue jitter: shift drawn from U[-h, h], h in [0, 0.5]; 0 turns it off.</summary>
    public double Hue { get; init; } = 0.3;
    /// <summary>Probability of converting to greyscale.</summary>
    public double GrayscaleProbability { get; init; } = 0.1;

    /// <summary>DomainBed's train augmentation.</summary>
    public static AugmentOptions DomainBed { get; } = new();
}

/// <summary>
/// DomainBed's image transforms (torchvision 0.14 on PIL images, Pillow 9.4), in plain C# on <see cref="ImageU8"/>:
/// the same integer and floating-point arithmetic as Pillow, so every uint8 result equals PIL's bit for bit.
/// Pure functions: thread-safe, inputs never modified; every random choice comes from the <see cref="Random"/> passed in,
/// so an augmented sample is a function of its generator's seed.
/// </summary>
/// <remarks>
/// <para>Channels: <see cref="Resize"/>, crops and flips take any channel count and resample channels independently (PIL's
/// L and RGB; PIL premultiplies alpha for LA/RGBA, which this does not). Colour adjustments take 1 (L) or 3 (RGB) channels.</para>
/// <para>Order of random draws in <see cref="SampleTrain"/> (= torchvision's order):
/// (1) RandomResizedCrop: for each of up to 10 attempts, the area fraction U[scaleMin, scaleMax) then the log aspect ratio
/// U[ln ratioMin, ln ratioMax); an accepted attempt then draws top = Next(H - h + 1) and left = Next(W - w + 1);
/// (2) flip: NextDouble() &lt; p; (3) ColorJitter: the permutation (Fisher-Yates, Next(4), Next(3), Next(2)), then the
/// brightness, contrast, saturation and hue factors, each only if that jitter is on; (4) grayscale: NextDouble() &lt; p.</para>
/// </remarks>
public static class Transforms
{
    /// <summary>ImageNet channel means (R, G, B), as torchvision's Normalize gets them in float32.</summary>
    public static ReadOnlySpan<float> ImageNetMean => [0.485f, 0.456f, 0.406f];
    /// <summary>ImageNet channel standard deviations (R, G, B).</summary>
    public static ReadOnlySpan<float> ImageNetStd => [0.229f, 0.224f, 0.225f];

    // ------------------------------------------------------------------------------------------------------------
    // Geometry
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>PIL's <c>img.resize((width, height), Image.BILINEAR)</c>, bit for bit (Pillow 9.4 Resample.c).</summary>
    /// <remarks>
    /// Separable: a horizontal pass (only when the width changes) over just the rows the vertical pass needs, rounded and
    /// clipped to uint8, then a vertical pass (only when the height changes). The triangle filter's support is scaled by the
    /// reduction factor when downscaling (antialiasing), weights are normalised in double precision and rounded to 22-bit
    /// fixed point, and each sum starts at 0.5 in fixed point before the shift.
    /// </remarks>
    public static ImageU8 Resize(ImageU8 img, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(img);
        return ResizeRegion(img, new CropBox(0, 0, img.Height, img.Width), height, width);
    }

    /// <summary>PIL's <c>img.crop((left, top, left + width, top + height))</c> for a box inside the image.</summary>
    public static ImageU8 Crop(ImageU8 img, CropBox box)
    {
        ArgumentNullException.ThrowIfNull(img);
        CheckBox(img, box);
        int c = img.Channels, rowBytes = box.Width * c;
        var dst = new byte[box.Height * rowBytes];
        for (int y = 0; y < box.Height; y++)
            Array.Copy(img.Pixels, ((box.Top + y) * img.Width + box.Left) * c, dst, y * rowBytes, rowBytes);
        return new ImageU8(box.Height, box.Width, c, dst);
    }

    /// <summary>torchvision's <c>resized_crop</c> on PIL: crop to <paramref name="box"/>, then <see cref="Resize"/> (without copying the crop).</summary>
    public static ImageU8 ResizedCrop(ImageU8 img, CropBox box, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(img);
        CheckBox(img, box);
        return ResizeRegion(img, box, height, width);
    }

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
        return ResizeRegion(img, box, height, width);
    }

    /// <summary>PIL's <c>transpose(FLIP_LEFT_RIGHT)</c>.</summary>
    public static ImageU8 HorizontalFlip(ImageU8 img)
    {
        ArgumentNullException.ThrowIfNull(img);
        int h = img.Height, w = img.Width, c = img.Channels;
        var src = img.Pixels;
        var dst = new byte[src.Length];
        for (int y = 0; y < h; y++)
        {
            int row = y * w * c;
            for (int x = 0; x < w; x++)
            {
                int s = row + x * c, d = row + (w - 1 - x) * c;
                for (int k = 0; k < c; k++) dst[d + k] = src[s + k];
            }
        }
        return new ImageU8(h, w, c, dst);
    }

    // ------------------------------------------------------------------------------------------------------------
    // Colour (ImageEnhance + Image.blend, torchvision's adjust_hue, convert('L'))
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>
    /// <c>ImageEnhance.Brightness(img).enhance(factor)</c>: <c>Image.blend(black, img, factor)</c>, i.e. per channel
    /// <c>(uint8) (factor · v)</c> in float32, truncated, clipped to [0, 255] when factor &gt; 1.
    /// </summary>
    public static ImageU8 AdjustBrightness(ImageU8 img, double factor)
    {
        CheckColor(img);
        float alpha = (float)factor;
        Span<byte> lut = stackalloc byte[256];
        for (int v = 0; v < 256; v++) lut[v] = Blend(0, v, alpha);
        return MapLut(img, lut);
    }

    /// <summary>
    /// <c>ImageEnhance.Contrast(img).enhance(factor)</c>: blend with a grey image of the mean of the L conversion,
    /// <c>int(mean + 0.5)</c> over the L histogram, as ImageStat computes it.
    /// </summary>
    public static ImageU8 AdjustContrast(ImageU8 img, double factor)
    {
        CheckColor(img);
        int mean = GrayMean(img);
        float alpha = (float)factor;
        Span<byte> lut = stackalloc byte[256];
        for (int v = 0; v < 256; v++) lut[v] = Blend(mean, v, alpha);
        return MapLut(img, lut);
    }

    /// <summary>
    /// <c>ImageEnhance.Color(img).enhance(factor)</c> (torchvision's adjust_saturation): per pixel, blend each channel with
    /// the pixel's L value. An L image is returned unchanged.
    /// </summary>
    public static ImageU8 AdjustSaturation(ImageU8 img, double factor)
    {
        CheckColor(img);
        if (img.Channels == 1) return Copy(img);
        float alpha = (float)factor;
        // alpha * (v - l) for every difference -255..255: the same float product the blend computes.
        Span<float> prod = stackalloc float[511];
        for (int d = -255; d <= 255; d++) prod[d + 255] = alpha * d;
        bool inRange = alpha >= 0 && alpha <= 1.0;
        var src = img.Pixels;
        var dst = new byte[src.Length];
        for (int i = 0; i < src.Length; i += 3)
        {
            int r = src[i], g = src[i + 1], b = src[i + 2];
            int l = Luma(r, g, b);
            dst[i] = BlendProduct(l, prod[r - l + 255], inRange);
            dst[i + 1] = BlendProduct(l, prod[g - l + 255], inRange);
            dst[i + 2] = BlendProduct(l, prod[b - l + 255], inRange);
        }
        return new ImageU8(img.Height, img.Width, 3, dst);
    }

    /// <summary>
    /// torchvision's <c>adjust_hue</c> for PIL: <c>convert('HSV')</c>, add <c>uint8(factor · 255)</c> (truncated towards zero,
    /// wrapping) to H, <c>convert('RGB')</c>, with Pillow's float32/float64 RGB↔HSV arithmetic. An L image is returned unchanged.
    /// </summary>
    /// <param name="img">An RGB (or L) image.</param>
    /// <param name="hueFactor">The shift, in [-0.5, 0.5].</param>
    public static ImageU8 AdjustHue(ImageU8 img, double hueFactor)
    {
        CheckColor(img);
        if (!(hueFactor >= -0.5 && hueFactor <= 0.5)) throw new ArgumentOutOfRangeException(nameof(hueFactor), hueFactor, "hue factor must be in [-0.5, 0.5]");
        if (img.Channels == 1) return Copy(img);
        byte shift = unchecked((byte)(int)(hueFactor * 255));
        var src = img.Pixels;
        var dst = new byte[src.Length];
        for (int i = 0; i < src.Length; i += 3)
        {
            Hsv.FromRgb(src[i], src[i + 1], src[i + 2], out byte h, out byte s, out byte v);
            Hsv.ToRgb(unchecked((byte)(h + shift)), s, v, out dst[i], out dst[i + 1], out dst[i + 2]);
        }
        return new ImageU8(img.Height, img.Width, 3, dst);
    }

    /// <summary>
    /// torchvision's <c>rgb_to_grayscale(img, outputChannels)</c> on PIL: <c>convert('L')</c>
    /// (L = (299 R + 587 G + 114 B) / 1000 in Pillow's 16-bit fixed point, rounded), replicated to 3 channels when asked.
    /// </summary>
    public static ImageU8 ToGrayscale(ImageU8 img, int outputChannels = 3)
    {
        CheckColor(img);
        if (outputChannels is not (1 or 3)) throw new ArgumentOutOfRangeException(nameof(outputChannels), outputChannels, "must be 1 or 3");
        int n = img.Height * img.Width;
        var src = img.Pixels;
        var dst = new byte[n * outputChannels];
        for (int i = 0; i < n; i++)
        {
            byte l = img.Channels == 1 ? src[i] : (byte)Luma(src[3 * i], src[3 * i + 1], src[3 * i + 2]);
            if (outputChannels == 1) dst[i] = l;
            else dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = l;
        }
        return new ImageU8(img.Height, img.Width, outputChannels, dst);
    }

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
        CheckColor(img);
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

    // ------------------------------------------------------------------------------------------------------------
    // Tensors
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>
    /// ToTensor + Normalize: channel-major (C, H, W) float32, <c>((v / 255) - mean[c]) / std[c]</c> with each step rounded to
    /// float32 as torch computes it (bit-identical to torchvision).
    /// </summary>
    public static float[] ToCHW(ImageU8 img, ReadOnlySpan<float> mean, ReadOnlySpan<float> std)
    {
        ArgumentNullException.ThrowIfNull(img);
        var dst = new float[img.Channels * img.Height * img.Width];
        ToCHW(img, mean, std, dst);
        return dst;
    }

    /// <summary>ToTensor alone (mean 0, std 1: <c>v / 255</c>), as DomainBed's MNIST datasets.</summary>
    public static float[] ToCHW(ImageU8 img)
    {
        ArgumentNullException.ThrowIfNull(img);
        Span<float> zero = stackalloc float[img.Channels];
        Span<float> one = stackalloc float[img.Channels];
        zero.Clear(); one.Fill(1f);
        return ToCHW(img, zero, one);
    }

    /// <summary>ToTensor + Normalize into <paramref name="destination"/> (C·H·W floats, e.g. one slot of a batch buffer).</summary>
    public static void ToCHW(ImageU8 img, ReadOnlySpan<float> mean, ReadOnlySpan<float> std, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(img);
        int c = img.Channels, n = img.Height * img.Width;
        if (mean.Length != c || std.Length != c) throw new ArgumentException($"mean and std need {c} values, got {mean.Length} and {std.Length}");
        if (destination.Length != c * n) throw new ArgumentException($"destination needs {c * n} floats, got {destination.Length}");
        Span<float> lut = stackalloc float[256];
        var src = img.Pixels;
        for (int k = 0; k < c; k++)
        {
            float m = mean[k], s = std[k];
            for (int v = 0; v < 256; v++) lut[v] = (v / 255f - m) / s;
            var plane = destination.Slice(k * n, n);
            for (int i = 0, j = k; i < n; i++, j += c) plane[i] = lut[src[j]];
        }
    }

    // ------------------------------------------------------------------------------------------------------------
    // DomainBed pipelines
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>Draws every random choice of one train transform (see the class remarks for the order of draws).</summary>
    public static TrainParams SampleTrain(int imageHeight, int imageWidth, Random rng, AugmentOptions? options = null)
    {
        var o = options ?? AugmentOptions.DomainBed;
        var crop = SampleCrop(imageHeight, imageWidth, rng, o.ScaleMin, o.ScaleMax, o.RatioMin, o.RatioMax);
        bool flip = rng.NextDouble() < o.FlipProbability;
        var jitter = SampleColorJitter(rng, o.Brightness, o.Contrast, o.Saturation, o.Hue);
        bool gray = rng.NextDouble() < o.GrayscaleProbability;
        return new TrainParams(crop, flip, jitter, gray);
    }

    /// <summary>
    /// The train transform with given choices, up to ToTensor: RandomResizedCrop (bilinear) to (height, width), horizontal
    /// flip, ColorJitter, RandomGrayscale (3 channels). Equals torchvision on PIL bit for bit.
    /// </summary>
    public static ImageU8 ApplyTrain(ImageU8 img, TrainParams p, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(p);
        CheckColor(img);
        var x = ResizedCrop(img, p.Crop, height, width);
        if (p.Flip) x = HorizontalFlip(x);
        x = ColorJitter(x, p.Jitter);
        if (p.Grayscale) x = ToGrayscale(x, x.Channels);
        return x;
    }

    /// <summary>
    /// DomainBed's train transform: RandomResizedCrop((height, width), scale (0.7, 1)), RandomHorizontalFlip(0.5),
    /// ColorJitter(0.3, 0.3, 0.3, 0.3), RandomGrayscale(0.1), ToTensor, Normalize(ImageNet). Returns (3, height, width) floats.
    /// </summary>
    public static float[] TrainTransform(ImageU8 img, int height, int width, Random rng, AugmentOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(img);
        var p = SampleTrain(img.Height, img.Width, rng, options);
        return ToCHW(ApplyTrain(img, p, height, width), ImageNetMean, ImageNetStd);
    }

    /// <summary>DomainBed's eval transform: Resize((height, width)) (bilinear), ToTensor, Normalize(ImageNet).</summary>
    public static float[] EvalTransform(ImageU8 img, int height, int width) =>
        ToCHW(Resize(img, height, width), ImageNetMean, ImageNetStd);

    // ------------------------------------------------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------------------------------------------------

    static double Uniform(Random rng, double lo, double hi) => lo + (hi - lo) * rng.NextDouble();

    static void CheckBox(ImageU8 img, CropBox b)
    {
        if (b.Height <= 0 || b.Width <= 0 || b.Top < 0 || b.Left < 0 || b.Top + b.Height > img.Height || b.Left + b.Width > img.Width)
            throw new ArgumentException($"crop {b} is not inside the {img.Height}x{img.Width} image");
    }

    static void CheckColor(ImageU8 img)
    {
        ArgumentNullException.ThrowIfNull(img);
        if (img.Channels is not (1 or 3)) throw new ArgumentException($"expected an RGB or L image (3 or 1 channels), got {img.Channels} channels");
    }

    static ImageU8 Copy(ImageU8 img) => new(img.Height, img.Width, img.Channels, (byte[])img.Pixels.Clone());

    static ImageU8 MapLut(ImageU8 img, ReadOnlySpan<byte> lut)
    {
        var src = img.Pixels;
        var dst = new byte[src.Length];
        for (int i = 0; i < src.Length; i++) dst[i] = lut[src[i]];
        return new ImageU8(img.Height, img.Width, img.Channels, dst);
    }

    /// <summary>Pillow's L24: (19595 R + 38470 G + 7471 B + 0x8000) >> 16.</summary>
    static int Luma(int r, int g, int b) => (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;

    /// <summary>ImageStat's mean of the L conversion, rounded as ImageEnhance.Contrast does: int(mean + 0.5).</summary>
    static int GrayMean(ImageU8 img)
    {
        var src = img.Pixels;
        long sum = 0;
        if (img.Channels == 1) foreach (byte v in src) sum += v;
        else for (int i = 0; i < src.Length; i += 3) sum += Luma(src[i], src[i + 1], src[i + 2]);
        double mean = (double)sum / (img.Height * img.Width);
        return (int)(mean + 0.5);
    }

    /// <summary>One sample of Pillow's ImagingBlend(in1, in2, alpha): in1 + alpha (in2 - in1) in float32, truncated (clipped outside [0, 1]).</summary>
    static byte Blend(int in1, int in2, float alpha) => BlendProduct(in1, alpha * (in2 - in1), alpha >= 0 && alpha <= 1.0);

    static byte BlendProduct(int in1, float product, bool inRange)
    {
        float t = in1 + product;
        if (inRange) return (byte)(int)t;
        return t <= 0f ? (byte)0 : t >= 255f ? (byte)255 : (byte)(int)t;
    }

    /// <summary>
    /// Pillow's rgb2hsv_row and hsv2rgb (Convert.c), with their float32 and float64 steps, C's round (half away from zero),
    /// and every division that depends on at most two bytes read from a table of its exact float result.
    /// </summary>
    static class Hsv
    {
        static readonly float[] Quotient = new float[256 * 256];    // [num, cr]: (float)num / (float)cr
        static readonly byte[] Saturation = new byte[256 * 256];    // [maxc, cr]: clip8((int)((cr / (float)maxc) * 255.0))
        static readonly byte[] P = new byte[256 * 256];             // [s, v]: round(v * (1.0 - fs))
        static readonly int[] Sector = new int[256];                // [h]: floor(h * 6.0 / 255.0) % 6
        static readonly float[] Fraction = new float[256];          // [h]: (float)(h * 6.0 / 255.0 - i)
        static readonly float[] SatFraction = new float[256];       // [s]: (float)(s / 255.0)

        static Hsv()
        {
            for (int cr = 1; cr < 256; cr++)
                for (int num = 0; num < 256; num++) Quotient[num * 256 + cr] = num / (float)cr;
            for (int maxc = 1; maxc < 256; maxc++)
                for (int cr = 1; cr <= maxc; cr++) Saturation[maxc * 256 + cr] = Clip8((int)((float)cr / maxc * 255.0));
            for (int x = 0; x < 256; x++)
            {
                double h6 = (float)x * 6.0 / 255.0;
                int i = (int)Math.Floor(h6);
                Sector[x] = i % 6;
                Fraction[x] = (float)(h6 - (float)i);
                SatFraction[x] = (float)((float)x / 255.0);
            }
            for (int s = 0; s < 256; s++)
                for (int v = 0; v < 256; v++) P[s * 256 + v] = Round((float)v * (1.0 - SatFraction[s]));
        }

        /// <summary>C's round() for 0 &lt;= x &lt; 2^31: half away from zero (x - floor(x) is exact).</summary>
        static byte Round(double x)
        {
            double f = Math.Floor(x);
            return Clip8((int)f + (x - f >= 0.5 ? 1 : 0));
        }

        public static void FromRgb(byte r, byte g, byte b, out byte uh, out byte us, out byte uv)
        {
            int maxc = Math.Max(r, Math.Max(g, b)), minc = Math.Min(r, Math.Min(g, b));
            uv = (byte)maxc;
            if (minc == maxc) { uh = 0; us = 0; return; }
            int cr = maxc - minc;
            float h;
            if (r == maxc) h = Quotient[(maxc - b) * 256 + cr] - Quotient[(maxc - g) * 256 + cr];
            else if (g == maxc) h = (float)(2.0 + Quotient[(maxc - r) * 256 + cr] - Quotient[(maxc - b) * 256 + cr]);
            else h = (float)(4.0 + Quotient[(maxc - g) * 256 + cr] - Quotient[(maxc - r) * 256 + cr]);
            double x = h / 6.0 + 1.0;                   // in [5/6, 11/6]: fmod(x, 1.0) is x or x - 1 (exact)
            h = (float)(x >= 1.0 ? x - 1.0 : x);
            uh = Clip8((int)(h * 255.0));
            us = Saturation[maxc * 256 + cr];
        }

        public static void ToRgb(byte h, byte s, byte v, out byte r, out byte g, out byte b)
        {
            if (s == 0) { r = g = b = v; return; }
            float f = Fraction[h], fs = SatFraction[s];
            byte up = P[s * 256 + v];
            byte uq = Round((float)v * (1.0 - fs * f));             // fs * f: a float32 product, as in C
            byte ut = Round((float)v * (1.0 - fs * (1.0 - f)));     // 1.0 - f: double
            switch (Sector[h])
            {
                case 0: r = v; g = ut; b = up; break;
                case 1: r = uq; g = v; b = up; break;
                case 2: r = up; g = v; b = ut; break;
                case 3: r = up; g = uq; b = v; break;
                case 4: r = ut; g = up; b = v; break;
                default: r = v; g = up; b = uq; break;
            }
        }
    }

    static byte Clip8(int v) => v <= 0 ? (byte)0 : v < 256 ? (byte)v : (byte)255;

    // --- Pillow 9.4 Resample.c, bilinear, 8 bits per channel -----------------------------------------------------

    const int PrecisionBits = 32 - 8 - 2;

    /// <summary>Fixed-point weights of one pass: output i reads <c>Count[i]</c> inputs from <c>Start[i]</c> with weights <c>Weights[i*KSize ..]</c>.</summary>
    sealed class Coefficients(int[] start, int[] count, int[] weights, int kSize)
    {
        public readonly int[] Start = start, Count = count, Weights = weights;
        public readonly int KSize = kSize;
    }

    static Coefficients Precompute(int inSize, int outSize)
    {
        // precompute_coeffs with in0 = 0, in1 = inSize (the box of a whole image, or of a crop: PIL crops first).
        double scale = (double)inSize / outSize;
        double filterScale = scale < 1.0 ? 1.0 : scale;
        double support = 1.0 * filterScale;                  // the bilinear (triangle) filter has support 1
        int kSize = (int)Math.Ceiling(support) * 2 + 1;
        var start = new int[outSize];
        var count = new int[outSize];
        var weights = new int[outSize * kSize];
        Span<double> k = stackalloc double[kSize];
        double ss = 1.0 / filterScale;
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = (xx + 0.5) * scale;
            double ww = 0.0;
            int xmin = (int)(center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            for (int x = 0; x < xmax; x++)
            {
                double w = Triangle((x + xmin - center + 0.5) * ss);
                k[x] = w;
                ww += w;
            }
            for (int x = 0; x < xmax; x++)
            {
                double kx = ww != 0.0 ? k[x] / ww : k[x];
                weights[xx * kSize + x] = kx < 0
                    ? (int)(-0.5 + kx * (1 << PrecisionBits))
                    : (int)(0.5 + kx * (1 << PrecisionBits));
            }
            start[xx] = xmin;
            count[xx] = xmax;
        }
        return new Coefficients(start, count, weights, kSize);
    }

    static double Triangle(double x)
    {
        if (x < 0.0) x = -x;
        return x < 1.0 ? 1.0 - x : 0.0;
    }

    static byte ClipFixed(int ss)
    {
        int v = ss >> PrecisionBits;
        return v <= 0 ? (byte)0 : v >= 255 ? (byte)255 : (byte)v;
    }

    /// <summary>Crop <paramref name="box"/> then resize it (PIL's ImagingResampleInner on the cropped image).</summary>
    static ImageU8 ResizeRegion(ImageU8 img, CropBox box, int outH, int outW)
    {
        if (outH <= 0 || outW <= 0) throw new ArgumentException($"output size must be positive, got {outH}x{outW}");
        int c = img.Channels;
        bool needH = outW != box.Width, needV = outH != box.Height;
        if (!needH && !needV) return Crop(img, box);
        var vert = needV ? Precompute(box.Height, outH) : null;

        // Source of the vertical pass: the horizontally resampled rows, or the crop itself.
        byte[] src = img.Pixels;
        int srcStride = img.Width * c, srcRow0 = box.Top, srcCol0 = box.Left * c;
        if (needH)
        {
            int y0 = 0, y1 = box.Height;
            if (vert != null) { y0 = vert.Start[0]; y1 = vert.Start[outH - 1] + vert.Count[outH - 1]; }
            var horiz = Precompute(box.Width, outW);
            var tmp = new byte[(y1 - y0) * outW * c];
            HorizontalPass(img, box.Top + y0, box.Left, y1 - y0, horiz, outW, tmp);
            if (vert == null) return new ImageU8(outH, outW, c, tmp);
            src = tmp; srcStride = outW * c; srcRow0 = -y0; srcCol0 = 0;
        }
        var dst = new byte[outH * outW * c];
        VerticalPass(src, srcStride, srcRow0, srcCol0, vert!, outH, outW * c, dst);
        return new ImageU8(outH, outW, c, dst);
    }

    static void HorizontalPass(ImageU8 img, int row0, int col0, int rows, Coefficients k, int outW, byte[] dst)
    {
        int c = img.Channels, stride = img.Width * c, kSize = k.KSize;
        ref byte src = ref MemoryMarshal.GetArrayDataReference(img.Pixels);
        ref byte o = ref MemoryMarshal.GetArrayDataReference(dst);
        ref int weights = ref MemoryMarshal.GetArrayDataReference(k.Weights);
        int[] starts = k.Start, counts = k.Count;
        const int half = 1 << (PrecisionBits - 1);
        for (int y = 0; y < rows; y++)
        {
            int srow = (row0 + y) * stride + col0 * c;
            int drow = y * outW * c;
            for (int xx = 0; xx < outW; xx++)
            {
                int n = counts[xx], s = srow + starts[xx] * c, d = drow + xx * c;
                ref int w = ref Unsafe.Add(ref weights, xx * kSize);
                if (c == 3)
                {
                    int s0 = half, s1 = half, s2 = half;
                    ref byte p = ref Unsafe.Add(ref src, s);
                    for (int t = 0; t < n; t++)
                    {
                        int wt = Unsafe.Add(ref w, t);
                        ref byte q = ref Unsafe.Add(ref p, 3 * t);
                        s0 += q * wt;
                        s1 += Unsafe.Add(ref q, 1) * wt;
                        s2 += Unsafe.Add(ref q, 2) * wt;
                    }
                    Unsafe.Add(ref o, d) = ClipFixed(s0);
                    Unsafe.Add(ref o, d + 1) = ClipFixed(s1);
                    Unsafe.Add(ref o, d + 2) = ClipFixed(s2);
                }
                else
                {
                    for (int ch = 0; ch < c; ch++)
                    {
                        int acc = half;
                        for (int t = 0; t < n; t++) acc += Unsafe.Add(ref src, s + t * c + ch) * Unsafe.Add(ref w, t);
                        Unsafe.Add(ref o, d + ch) = ClipFixed(acc);
                    }
                }
            }
        }
    }

    static void VerticalPass(byte[] src, int stride, int row0, int col0, Coefficients k, int outH, int rowLen, byte[] dst)
    {
        const int half = 1 << (PrecisionBits - 1);
        var acc = new int[rowLen];
        int lanes = Vector<int>.Count, block = Vector<byte>.Count;   // one byte vector widens to 4 int vectors
        for (int yy = 0; yy < outH; yy++)
        {
            Array.Fill(acc, half);
            int wk = yy * k.KSize, n = k.Count[yy], first = k.Start[yy];
            for (int t = 0; t < n; t++)
            {
                int w = k.Weights[wk + t];
                var row = src.AsSpan((row0 + first + t) * stride + col0, rowLen);
                var wv = new Vector<int>(w);
                int j = 0;
                if (Vector.IsHardwareAccelerated)
                {
                    var accI = MemoryMarshal.Cast<int, Vector<int>>(acc.AsSpan());
                    for (; j + block <= rowLen; j += block)
                    {
                        var b = new Vector<byte>(row.Slice(j, block));
                        Vector.Widen(b, out Vector<ushort> lo, out Vector<ushort> hi);
                        Vector.Widen(lo, out Vector<uint> a0, out Vector<uint> a1);
                        Vector.Widen(hi, out Vector<uint> a2, out Vector<uint> a3);
                        int v = j / lanes;
                        accI[v] += Vector.AsVectorInt32(a0) * wv;
                        accI[v + 1] += Vector.AsVectorInt32(a1) * wv;
                        accI[v + 2] += Vector.AsVectorInt32(a2) * wv;
                        accI[v + 3] += Vector.AsVectorInt32(a3) * wv;
                    }
                }
                for (; j < rowLen; j++) acc[j] += row[j] * w;
            }
            var o = dst.AsSpan(yy * rowLen, rowLen);
            int m = 0;
            if (Vector.IsHardwareAccelerated)
            {
                var accI = MemoryMarshal.Cast<int, Vector<int>>(acc.AsSpan());
                var max = new Vector<int>(255);
                for (; m + block <= rowLen; m += block)
                {
                    int v = m / lanes;
                    var c0 = Vector.AsVectorUInt32(Vector.Min(Vector.Max(Vector.ShiftRightArithmetic(accI[v], PrecisionBits), Vector<int>.Zero), max));
                    var c1 = Vector.AsVectorUInt32(Vector.Min(Vector.Max(Vector.ShiftRightArithmetic(accI[v + 1], PrecisionBits), Vector<int>.Zero), max));
                    var c2 = Vector.AsVectorUInt32(Vector.Min(Vector.Max(Vector.ShiftRightArithmetic(accI[v + 2], PrecisionBits), Vector<int>.Zero), max));
                    var c3 = Vector.AsVectorUInt32(Vector.Min(Vector.Max(Vector.ShiftRightArithmetic(accI[v + 3], PrecisionBits), Vector<int>.Zero), max));
                    Vector.Narrow(Vector.Narrow(c0, c1), Vector.Narrow(c2, c3)).CopyTo(o.Slice(m, block));
                }
            }
            for (; m < o.Length; m++) o[m] = ClipFixed(acc[m]);
        }
    }
}
