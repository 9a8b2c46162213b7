using System.Runtime.InteropServices;
using SkiaSharp;

namespace SfMoe.Data;

/// <summary>Conversions between <see cref="ImageU8"/> and SkiaSharp bitmaps, and PNG output.</summary>
public static class SkiaImages
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

    /// <summary>Writes the image as a PNG file (to a temporary name first, then renamed).</summary>
    public static void SavePng(ImageU8 image, string path)
    {
        AtomicFile.WriteAllBytes(path, EncodePng(image));
    }
}

/// <summary>Contact sheets: a grid of samples of a dataset, for looking at it.</summary>
public static class DatasetPreview
{
    /// <summary>
    /// A grid with one row per class (at most <paramref name="maxClasses"/>) and, for each environment in order, a block
    /// of <paramref name="perCell"/> columns holding that class's first samples in that environment, each scaled to
    /// <paramref name="cellSize"/> pixels. Blocks are separated by a wider gap. Images that fail to load stay grey.
    /// </summary>
    public static ImageU8 ContactSheet(IMultiDomainDataset dataset, int perCell = 3, int cellSize = 64, int maxClasses = 20)
    {
        const int gap = 2, blockGap = 10;
        var envs = dataset.Environments;
        int nClasses = Math.Min(maxClasses, Math.Max(1, dataset.Spec.Classes.Count));
        int width = envs.Count * (perCell * (cellSize + gap)) + (envs.Count - 1) * blockGap + gap;
        int height = nClasses * (cellSize + gap) + gap;
        var info = new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Premul);
        using var sheet = new SKBitmap(info);
        using (var canvas = new SKCanvas(sheet))
        {
            canvas.Clear(new SKColor(255, 255, 255));
            using var grey = new SKPaint { Color = new SKColor(128, 128, 128) };
            var sampling = new SKSamplingOptions(SKFilterMode.Linear);
            for (int e = 0; e < envs.Count; e++)
            {
                var env = envs[e];
                var picked = new List<int>[nClasses];
                for (int k = 0; k < nClasses; k++) picked[k] = [];
                for (int i = 0; i < env.Count; i++)
                {
                    int y = env.LabelOf(i);
                    if (y < nClasses && picked[y].Count < perCell) picked[y].Add(i);
                }
                for (int k = 0; k < nClasses; k++)
                {
                    for (int j = 0; j < perCell; j++)
                    {
                        float x0 = gap + e * (perCell * (cellSize + gap) + blockGap) + j * (cellSize + gap);
                        float y0 = gap + k * (cellSize + gap);
                        var dest = new SKRect(x0, y0, x0 + cellSize, y0 + cellSize);
                        if (j >= picked[k].Count) { canvas.DrawRect(dest, grey); continue; }
                        try
                        {
                            using var bmp = SkiaImages.ToBitmap(env.Load(picked[k][j]));
                            using var img = SKImage.FromBitmap(bmp);
                            canvas.DrawImage(img, dest, sampling);
                        }
                        catch (ImageLoadException) { canvas.DrawRect(dest, grey); }
                    }
                }
            }
        }
        return SkiaImages.FromRgbaBitmap(sheet);
    }
}
