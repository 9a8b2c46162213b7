namespace SfMoe.Imaging;

/// <summary>An image that cannot be decoded: unreadable, truncated or not an image. The message names the file.</summary>
/// <remarks>
/// A plain <see cref="Exception"/>: this library depends on nothing of SfMoe's. The host's data loaders catch it and skip
/// the image with a warning; the host's single-image calls (e.g. <c>TrainedModel.Predict(path)</c>) rethrow it as a
/// <c>DatasetException</c> with the same message.
/// </remarks>
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
