using SfMoe.Imaging;

namespace SfMoe.Data;

/// <summary>The default preprocessing of a dataset at a model's input size.</summary>
public static class Preprocessors
{
    /// <summary>
    /// DomainBed's transforms for image datasets (train: RandomResizedCrop(0.7-1), flip, ColorJitter(0.3 x 4),
    /// RandomGrayscale(0.1), ImageNet normalisation; eval: bilinear resize + normalisation), or, for the MNIST datasets,
    /// pixels / 255 with no augmentation (resized only when the model's size differs). <paramref name="mean"/> and
    /// <paramref name="std"/> override the ImageNet statistics (e.g. 0.5/0.5 for augreg weights).
    /// </summary>
    public static IPreprocessor For(DatasetSpec spec, int size, float[]? mean = null, float[]? std = null) =>
        spec.Preprocess == Preprocess.Mnist
            ? new MnistPreprocessor(spec.Channels, size)
            : new ImageNetPreprocessor(spec.Channels, size, mean ?? Transforms.ImageNetMean.ToArray(), std ?? Transforms.ImageNetStd.ToArray());
}

/// <summary>DomainBed's image-dataset pipeline at a square input size.</summary>
public sealed class ImageNetPreprocessor : IPreprocessor
{
    readonly float[] _mean, _std;

    /// <summary>Creates the pipeline for RGB inputs of <paramref name="size"/> x <paramref name="size"/>.</summary>
    public ImageNetPreprocessor(int channels, int size, float[] mean, float[] std)
    {
        if (channels != 3) throw new DatasetException($"the image pipeline makes RGB inputs; the dataset has {channels} channels");
        if (mean.Length != 3 || std.Length != 3) throw new DatasetException("mean and std need 3 values");
        Height = Width = size; _mean = mean; _std = std;
    }

    /// <inheritdoc />
    public int Channels => 3;
    /// <inheritdoc />
    public int Height { get; }
    /// <inheritdoc />
    public int Width { get; }
    /// <inheritdoc />
    public float[] Mean => _mean;
    /// <inheritdoc />
    public float[] Std => _std;

    /// <inheritdoc />
    public void Train(ImageU8 image, Random rng, Span<float> dest)
    {
        var p = Transforms.SampleTrain(image.Height, image.Width, rng);
        Transforms.ToCHW(Transforms.ApplyTrain(image, p, Height, Width), _mean, _std, dest);
    }

    /// <inheritdoc />
    public ImageU8 Resize(ImageU8 image) =>
        image.Height == Height && image.Width == Width ? image : Transforms.Resize(image, Height, Width);

    /// <inheritdoc />
    public void ToInput(ImageU8 resized, Span<float> dest) => Transforms.ToCHW(resized, _mean, _std, dest);
}

/// <summary>DomainBed's MNIST inputs: pixels / 255, no augmentation, no normalisation.</summary>
public sealed class MnistPreprocessor : IPreprocessor
{
    /// <summary>Creates it for <paramref name="channels"/>-channel inputs of <paramref name="size"/> x <paramref name="size"/>.</summary>
    public MnistPreprocessor(int channels, int size)
    {
        Channels = channels; Height = Width = size;
        Mean = new float[channels];
        Std = Enumerable.Repeat(1f, channels).ToArray();
    }

    /// <inheritdoc />
    public int Channels { get; }
    /// <inheritdoc />
    public int Height { get; }
    /// <inheritdoc />
    public int Width { get; }
    /// <inheritdoc />
    public float[] Mean { get; }
    /// <inheritdoc />
    public float[] Std { get; }

    /// <inheritdoc />
    public void Train(ImageU8 image, Random rng, Span<float> dest) => ToInput(Resize(image), dest);

    /// <inheritdoc />
    public ImageU8 Resize(ImageU8 image) =>
        image.Height == Height && image.Width == Width ? image : Transforms.Resize(image, Height, Width);

    /// <inheritdoc />
    public void ToInput(ImageU8 resized, Span<float> dest)
    {
        if (resized.Channels != Channels)
            throw new DatasetException($"expected {Channels}-channel images, got {resized.Channels}");
        Transforms.ToCHW(resized, Mean, Std, dest);
    }
}
