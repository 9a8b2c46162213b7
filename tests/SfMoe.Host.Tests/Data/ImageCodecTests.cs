using System.Text.Json;
using SfMoe.Data;
using SfMoe.Imaging;
using static SfMoe.Host.Tests.Data.ImageFixtures;

namespace SfMoe.Host.Tests.Data;

/// <summary>ImageCodec against PIL's <c>Image.open(f).convert('RGB')</c> (Pillow 9.4) on every fixture format.</summary>
public class ImageCodecTests
{
    public static TheoryData<string> SmallFiles()
    {
        var data = new TheoryData<string>();
        foreach (var f in JsonSerializer.Deserialize<string[]>(Decoded.Metadata["files"])!)
            if (f != "photo_500x375.jpg") data.Add(f);
        return data;
    }

    [Theory]
    [MemberData(nameof(SmallFiles))]
    public void DecodesLikePil(string file)
    {
        var img = ImageCodec.Decode(PathOf(file));
        Assert.Equal(3, img.Channels);
        Equal(Decoded.Image("decode." + file), img, file);
    }

    [Fact]
    public void CoversEveryFormatAndConversion()
    {
        var files = SmallFiles().Cast<object[]>().Select(r => (string)r[0]).ToHashSet();
        foreach (var f in new[] { "rgb_37x53.jpg", "progressive_37x53.jpg", "gray_37x53.jpg", "cmyk_37x53.jpg", "rgb_37x53.png",
                                  "gray_37x53.png", "palette_37x53.png", "rgba_37x53.png", "la_37x53.png", "bilevel_37x53.png",
                                  "rgb16_37x53.png", "gray16_37x53.png", "gray16_interlaced_37x53.png", "palette_37x53.gif",
                                  "opaque_37x53.gif", "rgb_37x53.webp", "rgba_37x53_lossless.webp", "rgb_37x53.bmp" })
            Assert.Contains(f, files);
    }

    [Fact]
    public void DecodesTheLargeJpegLikePil()
    {
        var img = Photo;
        Assert.Equal((375, 500, 3), (img.Height, img.Width, img.Channels));
        var (rows, shape) = Decoded.Bytes("decode.photo_500x375.jpg.rows");
        Assert.Equal(new[] { 5, 500, 3 }, shape);
        int[] which = [0, 1, 187, 373, 374];
        for (int k = 0; k < which.Length; k++)
            Assert.True(rows.AsSpan(k * 1500, 1500).SequenceEqual(img.Pixels.AsSpan(which[k] * 1500, 1500)), $"row {which[k]} differs from PIL");
        Assert.Equal(Decoded.Metadata["sha256.photo_500x375.jpg"], Sha256(img.Pixels));
    }

    [Fact]
    public void SixteenBitGreyIsClippedAt255AsPilDoes()
    {
        // PIL opens 16-bit grey PNG as mode I; convert('RGB') clips each sample to [0, 255] (it does not scale).
        var img = ImageCodec.Decode(PathOf("gray16_37x53.png"));
        byte[] firstRow = [0, 1, 254, 255, 255, 255];   // the file stores 0, 1, 254, 255, 256, 65535
        for (int x = 0; x < 6; x++) Assert.Equal(firstRow[x], img[0, x, 0]);
        Equal(img, ImageCodec.Decode(PathOf("gray16_interlaced_37x53.png")), "interlaced = non-interlaced");
    }

    [Fact]
    public void SixteenBitRgbKeepsTheHighByte()
    {
        var img = ImageCodec.Decode(PathOf("rgb16_37x53.png"));
        Equal(ImageCodec.Decode(PathOf("rgb_37x53.png")), img, "high bytes of rgb16 = the 8-bit image");
    }

    [Fact]
    public void IgnoresExifOrientationAsPilDoes()
    {
        var img = ImageCodec.Decode(PathOf("exif_orientation6_37x53.jpg"));
        Assert.Equal((53, 37), (img.Height, img.Width));
        Equal(ImageCodec.Decode(PathOf("rgb_37x53.jpg")), img, "same pixels as without the EXIF tag");
    }

    [Fact]
    public void DropsAlphaWithoutCompositing()
    {
        var rgba = ImageCodec.Decode(PathOf("rgba_37x53.png"));
        Equal(ImageCodec.Decode(PathOf("rgb_37x53.png")), rgba, "RGBA with transparent pixels keeps the stored RGB");
    }

    [Theory]
    [InlineData("truncated_500x375.jpg", "truncated")]
    [InlineData("truncated_37x53.png", "truncated")]
    [InlineData("not_an_image.jpg", "not a recognised image format")]
    [InlineData("empty.png", "empty")]
    public void BadFilesThrowImageLoadExceptionNamingTheFile(string file, string reason)
    {
        var path = PathOf(file);
        var e = Assert.Throws<ImageLoadException>(() => ImageCodec.Decode(path));
        Assert.Equal(path, e.Source_);
        Assert.Contains(path, e.Message);
        Assert.Contains(reason, e.Reason);
    }

    [Fact]
    public void BadFileListMatchesTheFixtures()
    {
        var bad = JsonSerializer.Deserialize<string[]>(Decoded.Metadata["bad_files"])!;
        Assert.Equal(new[] { "truncated_500x375.jpg", "truncated_37x53.png", "not_an_image.jpg", "empty.png" }, bad);
    }

    [Fact]
    public void MissingFileThrowsImageLoadException()
    {
        var path = PathOf("no_such_file.jpg");
        var e = Assert.Throws<ImageLoadException>(() => ImageCodec.Decode(path));
        Assert.Equal(path, e.Source_);
        Assert.Contains("not found", e.Reason);
    }

    [Fact]
    public void DecodingBytesNamesTheGivenSource()
    {
        var e = Assert.Throws<ImageLoadException>(() => ImageCodec.Decode("GIF89a garbage"u8.ToArray(), "synthetic:photo/17"));
        Assert.StartsWith("synthetic:photo/17: ", e.Message);
        var ok = ImageCodec.Decode(File.ReadAllBytes(PathOf("rgb_37x53.png")), "bytes");
        Equal(Decoded.Image("decode.rgb_37x53.png"), ok, "from bytes");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void PngRoundTripsExactly(int channels)
    {
        var rng = new Random(channels);
        var px = new byte[13 * 29 * channels];
        rng.NextBytes(px);
        var img = new ImageU8(13, 29, channels, px);
        var back = ImageCodec.Decode(ImageCodec.EncodePng(img), "roundtrip.png");
        Assert.Equal((13, 29, 3), (back.Height, back.Width, back.Channels));
        for (int y = 0; y < 13; y++)
            for (int x = 0; x < 29; x++)
                for (int c = 0; c < 3; c++)
                    Assert.Equal(img[y, x, channels < 3 ? 0 : c], back[y, x, c]);
    }

    [Fact]
    public void JpegEncodingDecodesCloseToTheOriginal()
    {
        var img = Photo;
        var back = ImageCodec.Decode(ImageCodec.EncodeJpeg(img, 95), "q95.jpg");
        Assert.Equal((img.Height, img.Width), (back.Height, back.Width));
        double mae = 0;
        for (int i = 0; i < img.Pixels.Length; i++) mae += Math.Abs(img.Pixels[i] - back.Pixels[i]);
        Assert.True(mae / img.Pixels.Length < 3, $"mean abs error {mae / img.Pixels.Length}");
    }

    [Fact]
    public void WritePngWritesADecodableFile()
    {
        var path = Path.Combine(Path.GetTempPath(), $"sfmoe-{Guid.NewGuid():N}.png");
        try
        {
            var img = Decoded.Image("decode.rgb_37x53.png");
            ImageFiles.WritePng(img, path);
            Equal(img, ImageCodec.Decode(path), "written file");
        }
        finally { File.Delete(path); }
    }
}
