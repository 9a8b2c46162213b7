using System.Buffers;
using System.Buffers.Binary;
using System.IO.Compression;
using System.Runtime.InteropServices;
using SkiaSharp;

namespace SfMoe.Imaging;

/// <summary>
/// Decodes image files into 8-bit RGB <see cref="ImageU8"/> exactly as DomainBed reads them with PIL
/// (<c>Image.open(f).convert('RGB')</c>, Pillow 9.4), and encodes PNG/JPEG. Thread-safe; uses SkiaSharp.
/// </summary>
/// <remarks>
/// <para>What each kind of file becomes (checked bit for bit against Pillow 9.4 by the tests):</para>
/// <list type="bullet">
/// <item>JPEG (baseline, progressive, 4:2:0 / 4:4:4, greyscale, CMYK with Adobe polarity): Skia and PIL both decode with
/// libjpeg-turbo's default (islow IDCT, fancy upsampling) and give identical pixels. The EXIF orientation is ignored, as PIL's
/// <c>Image.open</c> ignores it. Embedded ICC profiles are ignored (no colour management), as PIL's convert ignores them.</item>
/// <item>PNG 8-bit grey / RGB / palette / grey+alpha / RGBA, 1-, 2-, 4-bit: the stored colour; alpha is dropped, not composited
/// (PIL's RGBA to RGB conversion drops it); a palette's transparency is ignored.</item>
/// <item>PNG 16-bit RGB(A): the high byte of every sample (PIL's <c>RGB;16B</c> unpacker truncates).</item>
/// <item>PNG 16-bit grey: PIL opens it as mode <c>I</c> and <c>convert('RGB')</c> clips the 16-bit value to 255, so any
/// sample of 255 or more becomes white; this reproduces that (the samples are read by a small PNG reader here, since Skia
/// reduces them to 8 bits first).</item>
/// <item>GIF: the first frame. Pixels that are transparent get the colour of the transparent palette index, which is what PIL's
/// <c>P</c> to <c>RGB</c> conversion shows (Skia alone would give black).</item>
/// <item>WebP (lossy and lossless), BMP: as decoded by libwebp / Skia (identical to PIL on the fixtures).</item>
/// </list>
/// <para>Errors: an unreadable, empty, truncated, corrupt or unsupported file throws <see cref="ImageLoadException"/> naming the
/// source and the reason. DomainBed sets PIL's <c>ImageFile.LOAD_TRUNCATED_IMAGES = True</c>, so PIL would return a partly grey
/// picture for a truncated JPEG; here a truncated file is an error, and the data pipeline skips it with a warning: a partial
/// decode is neither reproducible across decoders nor a useful training sample.</para>
/// </remarks>
public static class ImageCodec
{
    /// <summary>Images with more pixels than this are refused (PIL's DecompressionBombError threshold, 2 × 89,478,485).</summary>
    public const long MaxPixels = 178_956_970;

    /// <summary>Reads and decodes an image file to 3-channel RGB.</summary>
    /// <exception cref="ImageLoadException">the file cannot be read or decoded; the message names <paramref name="path"/>.</exception>
    public static ImageU8 Decode(string path)
    {
        byte[] data;
        try { data = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new ImageLoadException(path, e is FileNotFoundException or DirectoryNotFoundException
                ? "file not found" : $"cannot read the file: {e.Message}", e);
        }
        return Decode(data, path);
    }

    /// <summary>Decodes an encoded image (JPEG, PNG, GIF first frame, WebP, BMP, ...) to 3-channel RGB.</summary>
    /// <param name="data">The encoded bytes.</param>
    /// <param name="sourceName">Where the bytes come from, for error messages.</param>
    /// <exception cref="ImageLoadException">the data cannot be decoded; the message names <paramref name="sourceName"/>.</exception>
    public static ImageU8 Decode(byte[] data, string sourceName)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (data.Length == 0) throw new ImageLoadException(sourceName, "the file is empty");
        using var stream = new SKMemoryStream(data);
        using var codec = SKCodec.Create(stream, out var created);
        if (codec is null)
            throw new ImageLoadException(sourceName, created == SKCodecResult.IncompleteInput
                ? "truncated: the data ends inside the image header"
                : $"not a recognised image format ({created})");
        var info = codec.Info;
        int w = info.Width, h = info.Height;
        if (w <= 0 || h <= 0) throw new ImageLoadException(sourceName, $"invalid image size {w}x{h}");
        if ((long)w * h > MaxPixels)
            throw new ImageLoadException(sourceName, $"image too large: {w}x{h} pixels exceeds {MaxPixels} (decompression bomb limit)");

        bool gray = info.ColorType == SKColorType.Gray8;
        var target = new SKImageInfo(w, h, gray ? SKColorType.Gray8 : SKColorType.Rgba8888, SKAlphaType.Unpremul);
        int size = target.BytesSize;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(size);
        try
        {
            SKCodecResult result;
            var pin = GCHandle.Alloc(buffer, GCHandleType.Pinned);
            try { result = codec.GetPixels(target, pin.AddrOfPinnedObject()); }
            finally { pin.Free(); }
            if (result != SKCodecResult.Success)
                throw new ImageLoadException(sourceName, result switch
                {
                    SKCodecResult.IncompleteInput => $"truncated: the data ends before the {codec.EncodedFormat} image is complete",
                    SKCodecResult.ErrorInInput => $"corrupt {codec.EncodedFormat} data",
                    _ => $"cannot decode the {codec.EncodedFormat} image ({result})",
                });

            var rgb = new byte[checked(w * h * 3)];
            if (gray)
            {
                for (int i = 0, o = 0; i < w * h; i++, o += 3) rgb[o] = rgb[o + 1] = rgb[o + 2] = buffer[i];
                if (codec.EncodedFormat == SKEncodedImageFormat.Png && Png.IsGray16(data))
                {
                    try { Png.ClipGray16(data, w, h, rgb, sourceName); }
                    catch (Exception e) when (e is InvalidDataException or EndOfStreamException)
                    {
                        throw new ImageLoadException(sourceName, $"corrupt 16-bit PNG data: {e.Message}", e);
                    }
                }
            }
            else
            {
                for (int i = 0, o = 0, n = w * h; i < n; i++, o += 3)
                {
                    rgb[o] = buffer[4 * i]; rgb[o + 1] = buffer[4 * i + 1]; rgb[o + 2] = buffer[4 * i + 2];
                }
                if (codec.EncodedFormat == SKEncodedImageFormat.Gif) Gif.PaintTransparent(data, buffer, rgb, w * h);
            }
            return new ImageU8(h, w, 3, rgb);
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    /// <summary>Encodes an image as PNG (lossless). 1 channel: grey; 2: grey + alpha (stored as RGBA); 3: RGB; 4: RGBA (straight alpha).</summary>
    public static byte[] EncodePng(ImageU8 image) => Encode(image, p => p.Encode(SKPngEncoderOptions.Default));

    /// <summary>Encodes an image as JPEG at <paramref name="quality"/> (1..100). 1 channel: greyscale JPEG; alpha is dropped.</summary>
    public static byte[] EncodeJpeg(ImageU8 image, int quality = 90)
    {
        if (quality is < 1 or > 100) throw new ArgumentOutOfRangeException(nameof(quality), quality, "JPEG quality must be 1 to 100");
        return Encode(image, p => p.Encode(new SKJpegEncoderOptions(quality, SKJpegEncoderDownsample.Downsample420,
            SKJpegEncoderAlphaOption.Ignore)));
    }

    static byte[] Encode(ImageU8 image, Func<SKPixmap, SKData?> encode)
    {
        ArgumentNullException.ThrowIfNull(image);
        int n = image.Height * image.Width, c = image.Channels;
        var src = image.Pixels;
        byte[] pixels;
        SKImageInfo info;
        if (c == 1)
        {
            pixels = src;
            info = new SKImageInfo(image.Width, image.Height, SKColorType.Gray8, SKAlphaType.Opaque);
        }
        else
        {
            pixels = new byte[n * 4];
            for (int i = 0; i < n; i++)
            {
                int s = i * c, d = 4 * i;
                switch (c)
                {
                    case 2: pixels[d] = pixels[d + 1] = pixels[d + 2] = src[s]; pixels[d + 3] = src[s + 1]; break;
                    case 3: pixels[d] = src[s]; pixels[d + 1] = src[s + 1]; pixels[d + 2] = src[s + 2]; pixels[d + 3] = 255; break;
                    default: pixels[d] = src[s]; pixels[d + 1] = src[s + 1]; pixels[d + 2] = src[s + 2]; pixels[d + 3] = src[s + 3]; break;
                }
            }
            info = new SKImageInfo(image.Width, image.Height, SKColorType.Rgba8888, c == 3 ? SKAlphaType.Opaque : SKAlphaType.Unpremul);
        }
        var pin = GCHandle.Alloc(pixels, GCHandleType.Pinned);
        try
        {
            using var pixmap = new SKPixmap(info, pin.AddrOfPinnedObject(), info.RowBytes);
            using var data = encode(pixmap) ?? throw new InvalidOperationException("SkiaSharp could not encode the image");
            return data.ToArray();
        }
        finally { pin.Free(); }
    }

    /// <summary>GIF: give transparent pixels of the first frame the colour PIL shows for them.</summary>
    static class Gif
    {
        // PIL opens a GIF's first frame as mode P, filled with the transparent index (or 0) before the frame is drawn,
        // and convert('RGB') looks every index up in the frame's palette. Skia leaves those pixels transparent (0, 0, 0, 0).
        public static void PaintTransparent(byte[] gif, byte[] rgba, byte[] rgb, int n)
        {
            bool any = false;
            for (int i = 0; i < n && !any; i++) any = rgba[4 * i + 3] == 0;
            if (!any || !TryFirstFrame(gif, out var palette, out int paletteLength, out int fill)) return;
            byte r = 0, g = 0, b = 0;
            if (fill < paletteLength) { r = gif[palette + 3 * fill]; g = gif[palette + 3 * fill + 1]; b = gif[palette + 3 * fill + 2]; }
            for (int i = 0; i < n; i++)
                if (rgba[4 * i + 3] == 0) { rgb[3 * i] = r; rgb[3 * i + 1] = g; rgb[3 * i + 2] = b; }
        }

        /// <summary>Offset and entry count of the first frame's palette, and its transparent index (0 when none).</summary>
        static bool TryFirstFrame(byte[] d, out int palette, out int paletteLength, out int fill)
        {
            palette = -1; paletteLength = 0; fill = 0;
            if (d.Length < 13) return false;
            int pos = 13;
            if ((d[10] & 0x80) != 0)
            {
                paletteLength = 2 << (d[10] & 7);
                palette = pos;
                pos += 3 * paletteLength;
            }
            int transparent = -1;
            while (pos < d.Length)
            {
                byte block = d[pos++];
                if (block == 0x21)                                    // extension
                {
                    if (pos >= d.Length) return false;
                    byte label = d[pos++];
                    if (label == 0xF9 && pos + 5 <= d.Length && d[pos] >= 4 && (d[pos + 1] & 1) != 0) transparent = d[pos + 4];
                    while (pos < d.Length && d[pos] != 0) pos += d[pos] + 1;   // sub-blocks
                    pos++;
                }
                else if (block == 0x2C)                               // image descriptor
                {
                    if (pos + 9 > d.Length) return false;
                    byte packed = d[pos + 8];
                    if ((packed & 0x80) != 0) { paletteLength = 2 << (packed & 7); palette = pos + 9; }
                    if (palette < 0 || palette + 3 * paletteLength > d.Length) return false;
                    fill = transparent >= 0 ? transparent : 0;
                    return true;
                }
                else return false;
            }
            return false;
        }
    }

    /// <summary>The 16-bit greyscale PNG path: PIL's mode I, clipped at 255 by convert('RGB').</summary>
    static class Png
    {
        static ReadOnlySpan<byte> Signature => [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];

        public static bool IsGray16(byte[] d) =>
            d.Length >= 33 && d.AsSpan(0, 8).SequenceEqual(Signature) && d.AsSpan(12, 4).SequenceEqual("IHDR"u8)
            && d[24] == 16 && d[25] == 0;

        /// <summary>Reads the 16-bit samples and writes min(sample, 255) to every channel of <paramref name="rgb"/>.</summary>
        public static void ClipGray16(byte[] d, int w, int h, byte[] rgb, string source)
        {
            bool interlaced = d[28] == 1;
            using var idat = new MemoryStream();
            int pos = 8;
            while (pos + 12 <= d.Length)
            {
                int len = BinaryPrimitives.ReadInt32BigEndian(d.AsSpan(pos));
                if (len < 0 || pos + 12 + (long)len > d.Length) throw new ImageLoadException(source, "truncated: a PNG chunk runs past the end of the file");
                var type = d.AsSpan(pos + 4, 4);
                if (type.SequenceEqual("IDAT"u8)) idat.Write(d, pos + 8, len);
                else if (type.SequenceEqual("IEND"u8)) break;
                pos += 12 + len;
            }
            idat.Position = 0;
            using var z = new ZLibStream(idat, CompressionMode.Decompress);
            Span<(int X0, int Y0, int Dx, int Dy)> passes = interlaced
                ? [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
                : [(0, 0, 1, 1)];
            foreach (var (x0, y0, dx, dy) in passes)
            {
                int pw = (w - x0 + dx - 1) / dx, ph = (h - y0 + dy - 1) / dy;
                if (pw <= 0 || ph <= 0) continue;
                int stride = pw * 2;
                var prev = new byte[stride];
                var row = new byte[stride];
                for (int y = 0; y < ph; y++)
                {
                    int filter = z.ReadByte();
                    if (filter < 0) throw new ImageLoadException(source, "truncated: the PNG image data ends early");
                    z.ReadExactly(row);
                    Unfilter(filter, row, prev, 2, source);
                    int oy = y0 + y * dy;
                    for (int x = 0; x < pw; x++)
                    {
                        int v = (row[2 * x] << 8) | row[2 * x + 1];
                        byte c = (byte)Math.Min(v, 255);
                        int o = (oy * w + x0 + x * dx) * 3;
                        rgb[o] = rgb[o + 1] = rgb[o + 2] = c;
                    }
                    (prev, row) = (row, prev);
                }
            }
        }

        static void Unfilter(int filter, byte[] row, byte[] prev, int bpp, string source)
        {
            int n = row.Length;
            switch (filter)
            {
                case 0: break;
                case 1: for (int i = bpp; i < n; i++) row[i] += row[i - bpp]; break;
                case 2: for (int i = 0; i < n; i++) row[i] += prev[i]; break;
                case 3:
                    for (int i = 0; i < n; i++) row[i] += (byte)(((i >= bpp ? row[i - bpp] : 0) + prev[i]) >> 1);
                    break;
                case 4:
                    for (int i = 0; i < n; i++)
                    {
                        int a = i >= bpp ? row[i - bpp] : 0, b = prev[i], c = i >= bpp ? prev[i - bpp] : 0;
                        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
                        row[i] += (byte)(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
                    }
                    break;
                default: throw new ImageLoadException(source, $"corrupt PNG data: unknown row filter {filter}");
            }
        }
    }
}
