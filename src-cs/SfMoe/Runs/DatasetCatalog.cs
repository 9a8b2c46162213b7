using SfMoe.Data;
using SfMoe.Imaging;

namespace SfMoe.Runs;

/// <summary>Opens a run's dataset by name (default: the built-in Synthetic dataset).</summary>
internal static class DatasetCatalog
{
    public static IMultiDomainDataset Open(TrainOptions o, RunLog log)
    {
        var name = o.Dataset ?? "Synthetic";
        var synthetic = o.SyntheticSize is int n ? new SyntheticOptions { ImagesPerEnvironment = n } : new SyntheticOptions();
        return Datasets.Open(name, o.DataDir, ImageCodec.Decode, new DatasetOptions { Seed = o.Seed, Synthetic = synthetic });
    }
}
