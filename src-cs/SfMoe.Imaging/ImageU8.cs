namespace SfMoe.Imaging;

/// <summary>A decoded 8-bit image, row-major HWC (height, width, channels), channels 1 (grey) to 4 (RGBA).</summary>
public sealed class ImageU8
{
    /// <summary>Wraps pixel data; <paramref name="pixels"/> must hold height * width * channels bytes.</summary>
    public ImageU8(int height, int width, int channels, byte[] pixels)
    {
        if (height <= 0 || width <= 0) throw new ArgumentException($"image size must be positive, got {height}x{width}");
        if (channels is < 1 or > 4) throw new ArgumentException($"channels must be 1 to 4, got {channels}");
        if (pixels.Length != height * width * channels)
            throw new ArgumentException($"expected {height * width * channels} bytes for {height}x{width}x{channels}, got {pixels.Length}");
        Height = height; Width = width; Channels = channels; Pixels = pixels;
    }

    /// <summary>Rows.</summary>
    public int Height { get; }
    /// <summary>Columns.</summary>
    public int Width { get; }
    /// <summary>Channels per pixel.</summary>
    public int Channels { get; }
    /// <summary>Row-major HWC bytes.</summary>
    public byte[] Pixels { get; }

    /// <summary>The byte at (y, x, c).</summary>
    public byte this[int y, int x, int c] => Pixels[(y * Width + x) * Channels + c];
}
