using SfMoe.Imaging;

namespace SfMoe.Data;

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
