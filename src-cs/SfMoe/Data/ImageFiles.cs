using SfMoe.Imaging;

namespace SfMoe.Data;

/// <summary>Images written to files, through <see cref="AtomicFile"/> (a temporary file renamed, never half-written).</summary>
public static class ImageFiles
{
    /// <summary>Writes <paramref name="image"/> as PNG with its own channels (<see cref="ImageCodec.EncodePng"/>: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA).</summary>
    public static void WritePng(ImageU8 image, string path) => AtomicFile.WriteAllBytes(path, ImageCodec.EncodePng(image));

    /// <summary>
    /// Writes <paramref name="image"/> as an RGB(A) PNG of how it looks: grey repeated into R, G, B; two channels
    /// (ColoredMNIST) as red and green; a fourth channel as alpha.
    /// </summary>
    public static void WritePreviewPng(ImageU8 image, string path) => AtomicFile.WriteAllBytes(path, SkiaImages.EncodePng(image));
}
