using SfMoe.Data;

namespace SfMoe.Runs;

/// <summary>
/// DomainBed's draws for random hyperparameters: each one from its own numpy RandomState seeded with
/// seed_hash(hparams_seed, name); uniform = lo + (hi - lo) * random_sample(), choice = values[randint(len)],
/// bit-exact with numpy's legacy generator.
/// </summary>
internal sealed class HparamRandom : IHparamRandom
{
    /// <summary>The one instance (it has no state).</summary>
    public static readonly HparamRandom Instance = new();

    static Mt19937 For(int seed, string name) => new((uint)Splits.SeedHash(seed, name));

    /// <summary>numpy's random_sample: a 53-bit double from two 32-bit draws.</summary>
    static double Sample(Mt19937 rng)
    {
        uint a = rng.NextUInt32() >> 5, b = rng.NextUInt32() >> 6;
        return (a * 67108864.0 + b) / 9007199254740992.0;
    }

    /// <inheritdoc />
    public double Uniform(int seed, string name, double lo, double hi) => lo + (hi - lo) * Sample(For(seed, name));

    /// <inheritdoc />
    public T Choice<T>(int seed, string name, T[] values) => values[(int)For(seed, name).Interval((uint)(values.Length - 1))];
}
