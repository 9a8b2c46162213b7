using System.Runtime.InteropServices;
using SkiaSharp;

namespace SfMoe.Imaging;

/// <summary>
/// Conversions between <see cref="ImageU8"/> and SkiaSharp bitmaps, and PNG encoding of how an image looks (contact
/// sheets, plots, the Synthetic dataset's files).
/// </summary>
internal static class SkiaImages
{
    /// <summary>
    /// An RGBA bitmap of the image: gray is repeated into R, G, B; two channels (ColoredMNIST) become R and G with B = 0;
    /// a fourth channel is taken as unpremultiplied alpha. The caller disposes it.
    /// </summary>
    public static SKBitmap ToBitmap(ImageU8 image)
    {
        var info = new SKImageInfo(image.Width, image.Height, SKColorType.Rgba8888,
            image.Channels == 4 ? SKAlphaType.Unpremul : SKAlphaType.Opaque);
        var bmp = new SKBitmap(info);
        var dst = new byte[image.Width * image.Height * 4];
        var src = image.Pixels;
        int n = image.Width * image.Height, c = image.Channels;
        for (int i = 0; i < n; i++)
        {
            int s = i * c, d = i * 4;
            switch (c)
            {
                case 1: dst[d] = dst[d + 1] = dst[d + 2] = src[s]; dst[d + 3] = 255; break;
                case 2: dst[d] = src[s]; dst[d + 1] = src[s + 1]; dst[d + 2] = 0; dst[d + 3] = 255; break;
                case 3: dst[d] = src[s]; dst[d + 1] = src[s + 1]; dst[d + 2] = src[s + 2]; dst[d + 3] = 255; break;
                default: dst[d] = src[s]; dst[d + 1] = src[s + 1]; dst[d + 2] = src[s + 2]; dst[d + 3] = src[s + 3]; break;
            }
        }
        Marshal.Copy(dst, 0, bmp.GetPixels(), dst.Length);
        return bmp;
    }

    /// <summary>The RGB bytes of an opaque Rgba8888 bitmap (alpha dropped).</summary>
    public static ImageU8 FromRgbaBitmap(SKBitmap bmp)
    {
        if (bmp.ColorType != SKColorType.Rgba8888) throw new ArgumentException($"expected an Rgba8888 bitmap, got {bmp.ColorType}");
        var span = bmp.GetPixelSpan();
        int n = bmp.Width * bmp.Height;
        var rgb = new byte[n * 3];
        for (int i = 0; i < n; i++)
        {
            rgb[3 * i] = span[4 * i];
            rgb[3 * i + 1] = span[4 * i + 1];
            rgb[3 * i + 2] = span[4 * i + 2];
        }
        return new ImageU8(bmp.Height, bmp.Width, 3, rgb);
    }

    /// <summary>Encodes the image as PNG (see <see cref="ToBitmap"/> for how channels map).</summary>
    public static byte[] EncodePng(ImageU8 image)
    {
        using var bmp = ToBitmap(image);
        using var img = SKImage.FromBitmap(bmp);
        using var data = img.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }
}
