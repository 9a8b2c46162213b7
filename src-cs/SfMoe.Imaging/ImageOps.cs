namespace SfMoe.Imaging;

/// <summary>
/// An image to model input, as torchvision on PIL does it (Pillow 9.4, torchvision 0.14), bit for bit: the bilinear
/// resize, the greyscale conversion and ToTensor + Normalize. <c>sfmoe predict</c> and the data pipeline's eval transform
/// are <see cref="Resize"/> then <see cref="ToCHW(ImageU8, ReadOnlySpan{float}, ReadOnlySpan{float}, Span{float})"/>
/// (after <see cref="ToGrayscale"/> to 1 channel for a greyscale model). Pure functions: thread-safe, inputs never modified.
/// </summary>
public static class ImageOps
{
    /// <summary>PIL's <c>img.resize((width, height), Image.BILINEAR)</c>, bit for bit (Pillow 9.4 Resample.c).</summary>
    /// <remarks>Antialiased when downscaling, as PIL's (the triangle filter widens by the reduction factor). Any channel count;
    /// channels are resampled independently.</remarks>
    public static ImageU8 Resize(ImageU8 img, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(img);
        return PilResample.Resize(img, height, width);
    }

    /// <summary>
    /// torchvision's <c>rgb_to_grayscale(img, outputChannels)</c> on PIL: <c>convert('L')</c>
    /// (L = (299 R + 587 G + 114 B) / 1000 in Pillow's 16-bit fixed point, rounded), replicated to 3 channels when asked.
    /// Takes an RGB or L image.
    /// </summary>
    public static ImageU8 ToGrayscale(ImageU8 img, int outputChannels = 3) => PilColor.ToGrayscale(img, outputChannels);

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
}
