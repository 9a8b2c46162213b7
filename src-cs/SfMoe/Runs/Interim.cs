using SfMoe.Data;

namespace SfMoe.Runs
{

// Interim pieces, replaced when the data pipeline lands (datasets, exact DomainBed splits and hparam draws, transforms).

internal static class EnvSplits
{
    public static (int[] Out, int[] In) Split(int envIndex, int count, int trialSeed, double holdout)
    {
        var idx = Enumerable.Range(0, count).ToArray();
        new Random(SeedMix.Of(trialSeed, envIndex)).Shuffle(idx);
        int n = (int)(count * holdout);
        return (idx[..n], idx[n..]);
    }
}

internal sealed class HparamRandom : IHparamRandom
{
    public static readonly HparamRandom Instance = new();
    public double Uniform(int seed, string name, double lo, double hi) => lo + (hi - lo) * new Random(SeedMix.Of(seed, name.GetHashCode())).NextDouble();
    public T Choice<T>(int seed, string name, T[] values) => values[new Random(SeedMix.Of(seed, name.GetHashCode())).Next(values.Length)];
}

internal static class DatasetCatalog
{
    public static IMultiDomainDataset Open(TrainOptions o, RunLog log) => throw new SfMoeException("datasets by name are not available yet");
}

}

namespace SfMoe.Data
{
    /// <summary>Environment names by dataset name, for result tables.</summary>
    public static class DatasetNames
    {
        /// <summary>The environments of a known dataset, or null.</summary>
        public static IReadOnlyList<string>? EnvironmentsOf(string dataset) => null;
    }
}
