namespace SfMoe.Onnx;

/// <summary>
/// A model file or an input that SfMoe.Onnx cannot use: a missing, corrupt or foreign .onnx file, a model without
/// SfMoe's metadata, or an image the model cannot take. The message names the file and the problem.
/// </summary>
/// <remarks>A plain <see cref="Exception"/>: this package depends on nothing of SfMoe's but SfMoe.Imaging. Images that
/// cannot be decoded raise SfMoe.Imaging's <see cref="SfMoe.Imaging.ImageLoadException"/>.</remarks>
public sealed class OnnxModelException : Exception
{
    /// <summary>Creates the error.</summary>
    public OnnxModelException(string message, Exception? inner = null) : base(message, inner) { }
}
