using SfMoe.Imaging;

namespace SfMoe.Data;

/// <summary>All random choices of one pass of the DomainBed train transform.</summary>
/// <param name="Crop">The RandomResizedCrop rectangle in the input image.</param>
/// <param name="Flip">Whether the image is flipped left-right.</param>
/// <param name="Jitter">The ColorJitter draw.</param>
/// <param name="Grayscale">Whether the image is made grey (3 equal channels).</param>
public sealed record TrainParams(CropBox Crop, bool Flip, ColorJitterParams Jitter, bool Grayscale);

/// <summary>
/// The ranges and probabilities of the train augmentation. The defaults are DomainBed's:
/// <c>RandomResizedCrop(224, scale=(0.7, 1.0))</c>, <c>RandomHorizontalFlip()</c>, <c>ColorJitter(0.3, 0.3, 0.3, 0.3)</c>,
/// <c>RandomGrayscale()</c> (p = 0.1).
/// </summary>
public sealed record AugmentOptions
{
    /// <summary>Smallest fraction of the image area a crop covers.</summary>
    public double ScaleMin { get; init; } = 0.7;
    /// <summary>Largest fraction of the image area a crop covers.</summary>
    public double ScaleMax { get; init; } = 1.0;
    /// <summary>Smallest crop aspect ratio (width / height).</summary>
    public double RatioMin { get; init; } = 3.0 / 4.0;
    /// <summary>Largest crop aspect ratio (width / height).</summary>
    public double RatioMax { get; init; } = 4.0 / 3.0;
    /// <summary>Probability of a horizontal flip.</summary>
    public double FlipProbability { get; init; } = 0.5;
    /// <summary>Brightness jitter: factor drawn from U[max(0, 1 - b), 1 + b]; 0 turns it off.</summary>
    public double Brightness { get; init; } = 0.3;
    /// <summary>Contrast jitter: factor drawn from U[max(0, 1 - c), 1 + c]; 0 turns it off.</summary>
    public double Contrast { get; init; } = 0.3;
    /// <summary>Saturation jitter: factor drawn from U[max(0, 1 - s), 1 + s]; 0 turns it off.</summary>
    public double Saturation { get; init; } = 0.3;
    /// <summary>Hue jitter: shift drawn from U[-h, h], h in [0, 0.5]; 0 turns it off.</summary>
    public double Hue { get; init; } = 0.3;
    /// <summary>Probability of converting to greyscale.</summary>
    public double GrayscaleProbability { get; init; } = 0.1;

    /// <summary>DomainBed's train augmentation.</summary>
    public static AugmentOptions DomainBed { get; } = new();
}

// DomainBed's train and eval transforms: all random choices of one pass, then crop, flip, jitter, greyscale, normalise.
public static partial class Transforms
{
    /// <summary>Draws every random choice of one train transform (see the class remarks for the order of draws).</summary>
    public static TrainParams SampleTrain(int imageHeight, int imageWidth, Random rng, AugmentOptions? options = null)
    {
        var o = options ?? AugmentOptions.DomainBed;
        var crop = SampleCrop(imageHeight, imageWidth, rng, o.ScaleMin, o.ScaleMax, o.RatioMin, o.RatioMax);
        bool flip = rng.NextDouble() < o.FlipProbability;
        var jitter = SampleColorJitter(rng, o.Brightness, o.Contrast, o.Saturation, o.Hue);
        bool gray = rng.NextDouble() < o.GrayscaleProbability;
        return new TrainParams(crop, flip, jitter, gray);
    }

    /// <summary>
    /// The train transform with given choices, up to ToTensor: RandomResizedCrop (bilinear) to (height, width), horizontal
    /// flip, ColorJitter, RandomGrayscale (3 channels). Equals torchvision on PIL bit for bit.
    /// </summary>
    public static ImageU8 ApplyTrain(ImageU8 img, TrainParams p, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(p);
        PilColor.CheckColor(img);
        var x = ResizedCrop(img, p.Crop, height, width);
        if (p.Flip) x = HorizontalFlip(x);
        x = ColorJitter(x, p.Jitter);
        if (p.Grayscale) x = ToGrayscale(x, x.Channels);
        return x;
    }

    /// <summary>
    /// DomainBed's train transform: RandomResizedCrop((height, width), scale (0.7, 1)), RandomHorizontalFlip(0.5),
    /// ColorJitter(0.3, 0.3, 0.3, 0.3), RandomGrayscale(0.1), ToTensor, Normalize(ImageNet). Returns (3, height, width) floats.
    /// </summary>
    public static float[] TrainTransform(ImageU8 img, int height, int width, Random rng, AugmentOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(img);
        var p = SampleTrain(img.Height, img.Width, rng, options);
        return ToCHW(ApplyTrain(img, p, height, width), ImageNetMean, ImageNetStd);
    }

    /// <summary>DomainBed's eval transform: Resize((height, width)) (bilinear), ToTensor, Normalize(ImageNet).</summary>
    public static float[] EvalTransform(ImageU8 img, int height, int width) =>
        ToCHW(Resize(img, height, width), ImageNetMean, ImageNetStd);
}
