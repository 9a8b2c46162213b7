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

internal static class Preprocessors
{
    public static IPreprocessor For(DatasetSpec spec, int size) => new Nearest(spec.Channels, size);

    sealed class Nearest(int c, int size) : IPreprocessor
    {
        public int Channels => c; public int Height => size; public int Width => size;
        public float[] Mean => Enumerable.Repeat(0.5f, c).ToArray();
        public float[] Std => Enumerable.Repeat(0.25f, c).ToArray();
        public void Train(ImageU8 image, Random rng, Span<float> dest) { ToInput(Resize(image), dest); if (rng.Next(2) == 0) Flip(dest); }
        void Flip(Span<float> d) { for (int ch = 0; ch < c; ch++) for (int y = 0; y < size; y++) d.Slice((ch * size + y) * size, size).Reverse(); }
        public ImageU8 Resize(ImageU8 im)
        {
            var px = new byte[size * size * c];
            for (int y = 0; y < size; y++) for (int x = 0; x < size; x++) for (int ch = 0; ch < c; ch++)
                px[(y * size + x) * c + ch] = im[y * im.Height / size, x * im.Width / size, Math.Min(ch, im.Channels - 1)];
            return new ImageU8(size, size, c, px);
        }
        public void ToInput(ImageU8 r, Span<float> d)
        {
            for (int ch = 0; ch < c; ch++) for (int y = 0; y < size; y++) for (int x = 0; x < size; x++)
                d[(ch * size + y) * size + x] = (r[y, x, ch] / 255f - 0.5f) / 0.25f;
        }
    }
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
