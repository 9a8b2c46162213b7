namespace SfMoe.Data;

/// <summary>A decoded 8-bit image, row-major HWC (height, width, channels), channels 1 (gray), 2 or 3 (RGB).</summary>
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

/// <summary>How a dataset's images become model inputs.</summary>
public enum Preprocess
{
    /// <summary>DomainBed's image datasets: train augmentation (crop, flip, jitter, grayscale) and ImageNet normalisation.</summary>
    ImageNet,
    /// <summary>DomainBed's MNIST datasets: pixels / 255, no augmentation, no normalisation.</summary>
    Mnist,
}

/// <summary>What DomainBed knows about a dataset.</summary>
/// <param name="Name">DomainBed name, e.g. PACS.</param>
/// <param name="DirName">Folder under the data directory, e.g. PACS or office_home.</param>
/// <param name="Environments">Environment names in index order (the sorted folder names for image datasets).</param>
/// <param name="Classes">Class names in label order.</param>
/// <param name="Channels">Input channels.</param>
/// <param name="Height">Native input height (224 for the image datasets, 28 for MNIST).</param>
/// <param name="Width">Native input width.</param>
/// <param name="Steps">Default training steps.</param>
/// <param name="CheckpointFreq">Default evaluation frequency.</param>
/// <param name="Preprocess">How images become inputs.</param>
public sealed record DatasetSpec(
    string Name, string DirName, IReadOnlyList<string> Environments, IReadOnlyList<string> Classes,
    int Channels, int Height, int Width, int Steps, int CheckpointFreq, Preprocess Preprocess);

/// <summary>A part of an object and where it is in an image (pixels of the stored image; x right, y down).</summary>
public sealed record Keypoint(string Part, float X, float Y);

/// <summary>One environment (domain) of a dataset: a list of labelled images.</summary>
public interface IDomainEnvironment
{
    /// <summary>Environment name.</summary>
    string Name { get; }
    /// <summary>Number of samples.</summary>
    int Count { get; }
    /// <summary>Class index of sample i.</summary>
    int LabelOf(int index);
    /// <summary>Where sample i comes from (a file path, or e.g. "synthetic:photo/17"), for messages.</summary>
    string SourceOf(int index);
    /// <summary>Decodes sample i. Thread-safe. Throws <see cref="ImageLoadException"/> when it cannot be read.</summary>
    ImageU8 Load(int index);
    /// <summary>Keypoints of sample i's parts, or null when the dataset has none.</summary>
    IReadOnlyList<Keypoint>? KeypointsOf(int index);
}

/// <summary>A multi-domain dataset: a spec and its environments.</summary>
public interface IMultiDomainDataset
{
    /// <summary>The dataset's spec.</summary>
    DatasetSpec Spec { get; }
    /// <summary>Environments in index order.</summary>
    IReadOnlyList<IDomainEnvironment> Environments { get; }
}

/// <summary>An image that cannot be decoded: unreadable, truncated or not an image. The message names the file.</summary>
public sealed class ImageLoadException : Exception
{
    /// <summary>Creates the error.</summary>
    public ImageLoadException(string source, string reason, Exception? inner = null)
        : base($"{source}: {reason}", inner) { Source_ = source; Reason = reason; }

    /// <summary>The file or sample at fault.</summary>
    public string Source_ { get; }
    /// <summary>Why it could not be read.</summary>
    public string Reason { get; }
}
