using Microsoft.FSharp.Collections;
using SfMoe.Core;
using static TorchSharp.torch;

namespace SfMoe.Checkpoints;

/// <summary>
/// Model and checkpoint files by path, for the core's format codecs (SafeTensors, TorchFile, Npz, ImportSource,
/// Export), which read and write streams and start every message with the name they are given: here, the file's path.
/// Reading opens the file (a missing one is "&lt;path&gt;: file not found"); writing goes through
/// <see cref="AtomicFile"/>, so a failed write leaves the target as it was, and an I/O error is reported as
/// "&lt;path&gt;: cannot write: ...".
/// </summary>
internal static class TensorFiles
{
    /// <summary>Opens <paramref name="path"/> and hands it to <paramref name="read"/> with the path as its name; the
    /// file is closed when <paramref name="read"/> returns, so the result must not read it later.</summary>
    /// <exception cref="CheckpointException">The file does not exist, or the codec refuses it.</exception>
    public static T Read<T>(string path, Func<string, Stream, T> read)
    {
        if (!File.Exists(path)) throw new CheckpointException($"{path}: file not found");
        using var stream = File.OpenRead(path);
        return read(path, stream);
    }

    /// <summary>Writes <paramref name="path"/> atomically with <paramref name="write"/>, which gets the path as its
    /// name and the stream to fill.</summary>
    /// <exception cref="CheckpointException">The codec refuses the content, or the file cannot be written.</exception>
    public static void Write(string path, Action<string, Stream> write)
    {
        try { AtomicFile.Write(path, stream => write(path, stream)); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointException($"{path}: cannot write: {e.Message}", e);
        }
    }

    /// <summary>A .safetensors file's tensors and metadata (the caller disposes them).</summary>
    public static SafeTensors.Contents ReadSafeTensors(string path) => Read(path, SafeTensors.read);

    /// <summary>Writes tensors and header metadata as a .safetensors file, atomically.</summary>
    public static void WriteSafeTensors(string path, IEnumerable<KeyValuePair<string, string>> metadata, IEnumerable<Tuple<string, Tensor>> tensors)
    {
        var meta = MapModule.OfSeq(metadata.Select(kv => Tuple.Create(kv.Key, kv.Value)));
        var list = ListModule.OfSeq(tensors);
        Write(path, (name, stream) => SafeTensors.write(name, meta, list, stream));
    }
}
