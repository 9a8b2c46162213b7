using SfMoe.Imaging;

namespace SfMoe.Data;

/// <summary>
/// DomainBed's image transforms (torchvision 0.14 on PIL images, Pillow 9.4), in plain C# on <see cref="ImageU8"/>:
/// the same integer and floating-point arithmetic as Pillow, so every uint8 result equals PIL's bit for bit. The pixel
/// arithmetic lives in SfMoe.Imaging (shared with the ONNX runtime); this class is torchvision's functional API over it
/// (this file), RandomResizedCrop (RandomResizedCrop.cs), ColorJitter (ColorJitter.cs) and DomainBed's train and eval
/// pipelines (TrainPipeline.cs).
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
public static partial class Transforms
{
    /// <summary>ImageNet channel means (R, G, B), as torchvision's Normalize gets them in float32.</summary>
    public static ReadOnlySpan<float> ImageNetMean => [0.485f, 0.456f, 0.406f];
    /// <summary>ImageNet channel standard deviations (R, G, B).</summary>
    public static ReadOnlySpan<float> ImageNetStd => [0.229f, 0.224f, 0.225f];

    // ------------------------------------------------------------------------------------------------------------
    // Geometry
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>PIL's <c>img.resize((width, height), Image.BILINEAR)</c>, bit for bit (Pillow 9.4 Resample.c).</summary>
    public static ImageU8 Resize(ImageU8 img, int height, int width) => ImageOps.Resize(img, height, width);

    /// <summary>PIL's <c>img.crop((left, top, left + width, top + height))</c> for a box inside the image.</summary>
    public static ImageU8 Crop(ImageU8 img, CropBox box)
    {
        ArgumentNullException.ThrowIfNull(img);
        CheckBox(img, box);
        return PilGeometry.Crop(img, box.Top, box.Left, box.Height, box.Width);
    }

    /// <summary>torchvision's <c>resized_crop</c> on PIL: crop to <paramref name="box"/>, then <see cref="Resize"/> (without copying the crop).</summary>
    public static ImageU8 ResizedCrop(ImageU8 img, CropBox box, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(img);
        CheckBox(img, box);
        return PilResample.ResizeRegion(img, box.Top, box.Left, box.Height, box.Width, height, width);
    }

    /// <summary>PIL's <c>transpose(FLIP_LEFT_RIGHT)</c>.</summary>
    public static ImageU8 HorizontalFlip(ImageU8 img)
    {
        ArgumentNullException.ThrowIfNull(img);
        return PilGeometry.FlipLeftRight(img);
    }

    // ------------------------------------------------------------------------------------------------------------
    // Colour (ImageEnhance + Image.blend, torchvision's adjust_hue, convert('L'))
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>
    /// <c>ImageEnhance.Brightness(img).enhance(factor)</c>: <c>Image.blend(black, img, factor)</c>, i.e. per channel
    /// <c>(uint8) (factor · v)</c> in float32, truncated, clipped to [0, 255] when factor &gt; 1.
    /// </summary>
    public static ImageU8 AdjustBrightness(ImageU8 img, double factor) =>
        PilColor.AdjustBrightness(img, factor);

    /// <summary>
    /// <c>ImageEnhance.Contrast(img).enhance(factor)</c>: blend with a grey image of the mean of the L conversion,
    /// <c>int(mean + 0.5)</c> over the L histogram, as ImageStat computes it.
    /// </summary>
    public static ImageU8 AdjustContrast(ImageU8 img, double factor) =>
        PilColor.AdjustContrast(img, factor);

    /// <summary>
    /// <c>ImageEnhance.Color(img).enhance(factor)</c> (torchvision's adjust_saturation): per pixel, blend each channel with
    /// the pixel's L value. An L image is returned unchanged.
    /// </summary>
    public static ImageU8 AdjustSaturation(ImageU8 img, double factor) =>
        PilColor.AdjustSaturation(img, factor);

    /// <summary>
    /// torchvision's <c>adjust_hue</c> for PIL: <c>convert('HSV')</c>, add <c>uint8(factor · 255)</c> (truncated towards zero,
    /// wrapping) to H, <c>convert('RGB')</c>, with Pillow's float32/float64 RGB↔HSV arithmetic. An L image is returned unchanged.
    /// </summary>
    /// <param name="img">An RGB (or L) image.</param>
    /// <param name="hueFactor">The shift, in [-0.5, 0.5].</param>
    public static ImageU8 AdjustHue(ImageU8 img, double hueFactor) =>
        PilColor.AdjustHue(img, hueFactor);

    /// <summary>
    /// torchvision's <c>rgb_to_grayscale(img, outputChannels)</c> on PIL: <c>convert('L')</c>
    /// (L = (299 R + 587 G + 114 B) / 1000 in Pillow's 16-bit fixed point, rounded), replicated to 3 channels when asked.
    /// </summary>
    public static ImageU8 ToGrayscale(ImageU8 img, int outputChannels = 3) =>
        ImageOps.ToGrayscale(img, outputChannels);

    // ------------------------------------------------------------------------------------------------------------
    // Tensors
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>
    /// ToTensor + Normalize: channel-major (C, H, W) float32, <c>((v / 255) - mean[c]) / std[c]</c> with each step rounded to
    /// float32 as torch computes it (bit-identical to torchvision).
    /// </summary>
    public static float[] ToCHW(ImageU8 img, ReadOnlySpan<float> mean, ReadOnlySpan<float> std) =>
        ImageOps.ToCHW(img, mean, std);

    /// <summary>ToTensor alone (mean 0, std 1: <c>v / 255</c>), as DomainBed's MNIST datasets.</summary>
    public static float[] ToCHW(ImageU8 img) =>
        ImageOps.ToCHW(img);

    /// <summary>ToTensor + Normalize into <paramref name="destination"/> (C·H·W floats, e.g. one slot of a batch buffer).</summary>
    public static void ToCHW(ImageU8 img, ReadOnlySpan<float> mean, ReadOnlySpan<float> std, Span<float> destination) =>
        ImageOps.ToCHW(img, mean, std, destination);

    // ------------------------------------------------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------------------------------------------------

    static double Uniform(Random rng, double lo, double hi) => lo + (hi - lo) * rng.NextDouble();

    static void CheckBox(ImageU8 img, CropBox b)
    {
        if (b.Height <= 0 || b.Width <= 0 || b.Top < 0 || b.Left < 0 || b.Top + b.Height > img.Height || b.Left + b.Width > img.Width)
            throw new ArgumentException($"crop {b} is not inside the {img.Height}x{img.Width} image");
    }
}
