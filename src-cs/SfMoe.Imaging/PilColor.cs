namespace SfMoe.Imaging;

/// <summary>
/// Pillow's colour arithmetic on 1-channel (L) and 3-channel (RGB) images, bit for bit: ImageEnhance's Brightness,
/// Contrast and Color (an <c>Image.blend</c> in float32), torchvision's <c>adjust_hue</c> (PIL's RGB/HSV conversions in
/// their float32/float64 mix) and <c>convert('L')</c>. Pure functions; inputs are never modified.
/// </summary>
internal static class PilColor
{
    /// <summary>
    /// <c>ImageEnhance.Brightness(img).enhance(factor)</c>: <c>Image.blend(black, img, factor)</c>, i.e. per channel
    /// <c>(uint8) (factor · v)</c> in float32, truncated, clipped to [0, 255] when factor &gt; 1.
    /// </summary>
    internal static ImageU8 AdjustBrightness(ImageU8 img, double factor)
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
    internal static ImageU8 AdjustContrast(ImageU8 img, double factor)
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
    internal static ImageU8 AdjustSaturation(ImageU8 img, double factor)
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
    internal static ImageU8 AdjustHue(ImageU8 img, double hueFactor)
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
    internal static ImageU8 ToGrayscale(ImageU8 img, int outputChannels)
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

    /// <summary>Throws unless <paramref name="img"/> is an RGB or L image (3 or 1 channels).</summary>
    internal static void CheckColor(ImageU8 img)
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
}
