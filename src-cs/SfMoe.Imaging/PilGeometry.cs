namespace SfMoe.Imaging;

/// <summary>Pillow's crop and left-right transpose: byte copies, any channel count.</summary>
internal static class PilGeometry
{
    /// <summary>PIL's <c>img.crop((left, top, left + width, top + height))</c> for a box inside the image (the caller checks).</summary>
    internal static ImageU8 Crop(ImageU8 img, int top, int left, int height, int width)
    {
        int c = img.Channels, rowBytes = width * c;
        var dst = new byte[height * rowBytes];
        for (int y = 0; y < height; y++)
            Array.Copy(img.Pixels, ((top + y) * img.Width + left) * c, dst, y * rowBytes, rowBytes);
        return new ImageU8(height, width, c, dst);
    }

    /// <summary>PIL's <c>transpose(FLIP_LEFT_RIGHT)</c>.</summary>
    internal static ImageU8 FlipLeftRight(ImageU8 img)
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
}
