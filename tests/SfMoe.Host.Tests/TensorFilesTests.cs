using Microsoft.FSharp.Collections;
using SfMoe.Checkpoints;
using SfMoe.Core;
using static TorchSharp.torch;

namespace SfMoe.Host.Tests;

/// <summary>The host's model and checkpoint files: the core's stream codecs behind paths, written through the one
/// atomic writer. A failed write leaves the target as it was and no temporary file; errors name the file.</summary>
public class TensorFilesTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sfmoe-tensorfiles-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static TensorFilesTests() { Native.ensure(); }

    static readonly Dictionary<string, string> Meta = new() { ["format"] = "test", ["note"] = "ü" };

    static bool Same(Tensor a, Tensor b) => a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Fact]
    public void Written_files_hold_the_bytes_the_codec_writes_to_a_stream_and_read_back()
    {
        using var a = randn(3, 4);
        using var b = arange(6, dtype: ScalarType.Int64);
        var tensors = new[] { Tuple.Create("a", a), Tuple.Create("b", b) };
        var path = Path.Combine(_dir, "sub", "w.safetensors");
        TensorFiles.WriteSafeTensors(path, Meta, tensors);
        using var ms = new MemoryStream();
        SafeTensors.write(path, MapModule.OfSeq(Meta.Select(kv => Tuple.Create(kv.Key, kv.Value))), ListModule.OfSeq(tensors), ms);
        Assert.Equal(ms.ToArray(), File.ReadAllBytes(path));
        using var back = TensorFiles.ReadSafeTensors(path);
        Assert.Equal("ü", back.Metadata["note"]);
        Assert.True(Same(a, back.Item("a")) && Same(b, back.Item("b")));
        Assert.Equal(new[] { "w.safetensors" }, Directory.GetFiles(Path.GetDirectoryName(path)!).Select(Path.GetFileName));
    }

    [Fact]
    public void A_write_that_fails_leaves_the_existing_file_untouched_and_no_temporary_file()
    {
        using var ok = ones(2);
        using var complex = zeros(new long[] { 2 }, dtype: ScalarType.ComplexFloat32);
        var path = Path.Combine(_dir, "model.safetensors");
        TensorFiles.WriteSafeTensors(path, Meta, new[] { Tuple.Create("ok", ok) });
        var before = File.ReadAllBytes(path);

        // The safetensors codec refuses a dtype it cannot write.
        var e = Assert.Throws<CheckpointException>(() =>
            TensorFiles.WriteSafeTensors(path, Meta, new[] { Tuple.Create("ok", ok), Tuple.Create("z", complex) }));
        Assert.StartsWith($"{path}: tensor z: dtype", e.Message);
        // So does the torch.save codec (export).
        e = Assert.Throws<CheckpointException>(() => TensorFiles.Write(path, (name, s) =>
            TorchFile.write(name, ListModule.OfSeq(new[] { Tuple.Create("ok", ok), Tuple.Create("z", complex) }), s)));
        Assert.StartsWith($"{path}: tensor z: element type", e.Message);
        // A writer that fails after writing part of the file.
        e = Assert.Throws<CheckpointException>(() => TensorFiles.Write(path, (name, s) =>
        {
            s.Write(new byte[1000]);
            throw new CheckpointException($"{name}: failed half-way");
        }));
        Assert.Equal($"{path}: failed half-way", e.Message);

        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(new[] { "model.safetensors" }, Directory.GetFiles(_dir).Select(Path.GetFileName));
    }

    [Fact]
    public void Errors_name_the_file()
    {
        var missing = Path.Combine(_dir, "nope.safetensors");
        var e = Assert.Throws<CheckpointException>(() => TensorFiles.ReadSafeTensors(missing));
        Assert.Equal($"{missing}: file not found", e.Message);

        var truncated = Path.Combine(_dir, "cut.safetensors");
        File.WriteAllBytes(truncated, new byte[] { 1, 2, 3 });
        e = Assert.Throws<CheckpointException>(() => TensorFiles.ReadSafeTensors(truncated));
        Assert.StartsWith($"{truncated}: not a safetensors file", e.Message);

        // The target is a folder: the rename fails, reported as a checkpoint error naming the file.
        var folder = Path.Combine(_dir, "taken.safetensors");
        Directory.CreateDirectory(folder);
        using var t = ones(1);
        e = Assert.Throws<CheckpointException>(() => TensorFiles.WriteSafeTensors(folder, Meta, new[] { Tuple.Create("t", t) }));
        Assert.StartsWith($"{folder}: cannot write: ", e.Message);
        Assert.DoesNotContain(Directory.GetFiles(_dir), f => f.EndsWith(".tmp"));
    }
}
