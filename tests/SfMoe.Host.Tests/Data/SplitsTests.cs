using System.Globalization;
using System.Numerics;
using System.Text.Json;
using SfMoe.Data;
using static SfMoe.Host.Tests.Data.DataTestSupport;

namespace SfMoe.Host.Tests.Data;

/// <summary>DomainBed's seed_hash and split_dataset against numpy (tests/fixtures/gen_split_fixtures.py).</summary>
public class SplitsTests
{
    static readonly JsonElement Fx = FixtureJson("data/splits.json");

    static object? FromJson(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Null => null,
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        JsonValueKind.Number => e.GetRawText() is var t && (t.Contains('.') || t.Contains('e') || t.Contains('E'))
            ? e.GetDouble()
            : BigInteger.Parse(t, CultureInfo.InvariantCulture),
        _ => throw new InvalidDataException(e.ToString()),
    };

    [Fact]
    public void SeedHashMatchesPythonForEveryFixtureTuple()
    {
        int n = 0;
        foreach (var c in Fx.GetProperty("seed_hash").EnumerateArray())
        {
            var args = c.GetProperty("args").EnumerateArray().Select(FromJson).ToArray();
            Assert.Equal(c.GetProperty("repr").GetString(), Splits.PyRepr(new Splits.PyTuple(args)));
            Assert.Equal(c.GetProperty("hash").GetInt32(), Splits.SeedHash(args));
            n++;
        }
        Assert.True(n >= 20);
    }

    [Fact]
    public void SeedHashOfIntsAndTuplesUsesThePythonTupleRepr()
    {
        Assert.Equal("(0, 1)", Splits.PyRepr(new Splits.PyTuple([0, 1])));
        Assert.Equal("(5,)", Splits.PyRepr(new Splits.PyTuple([5])));
        Assert.Equal("('PACS', [0], (1, 'a'))", Splits.PyRepr(new Splits.PyTuple(["PACS", new[] { 0 }, (1, "a")])));
        Assert.Equal(1514274641, Splits.SeedHash(0, 1));   // python: seed_hash(0, 1)
        Assert.Equal(Splits.SeedHash(0L, 1L), Splits.SeedHash(0, 1));
    }

    [Fact]
    public void PermutationsMatchNumpyRandomStateShuffle()
    {
        foreach (var c in Fx.GetProperty("permutations").EnumerateArray())
        {
            int n = c.GetProperty("n").GetInt32();
            long seed = c.GetProperty("seed").GetInt64();
            var p = Splits.Permutation(n, seed);
            if (c.TryGetProperty("keys", out var keys))
                Assert.Equal(keys.EnumerateArray().Select(k => k.GetInt32()), p);
            else
            {
                Assert.Equal(c.GetProperty("head").EnumerateArray().Select(k => k.GetInt32()), p[..16]);
                Assert.Equal(c.GetProperty("tail").EnumerateArray().Select(k => k.GetInt32()), p[^16..]);
                Assert.Equal(c.GetProperty("sha256").GetString(), Sha256Ints(p));
            }
        }
    }

    [Fact]
    public void EnvSplitsMatchDomainBedTrainPy()
    {
        foreach (var c in Fx.GetProperty("env_splits").EnumerateArray())
        {
            int trial = c.GetProperty("trial_seed").GetInt32(), env = c.GetProperty("env").GetInt32(), count = c.GetProperty("count").GetInt32();
            var (outIdx, inIdx) = Splits.EnvSplit(env, count, trial);
            Assert.Equal(c.GetProperty("n_out").GetInt32(), outIdx.Length);
            Assert.Equal(count, outIdx.Length + inIdx.Length);
            Assert.Equal(c.GetProperty("out_head").EnumerateArray().Select(k => k.GetInt32()), outIdx.Take(8));
            Assert.Equal(c.GetProperty("in_head").EnumerateArray().Select(k => k.GetInt32()), inIdx.Take(8));
            Assert.Equal(c.GetProperty("out_sha256").GetString(), Sha256Ints(outIdx));
            Assert.Equal(c.GetProperty("in_sha256").GetString(), Sha256Ints(inIdx));
        }
    }

    [Fact]
    public void EnvSplitIsAPartitionWithTwentyPercentOut()
    {
        var (o, i) = Splits.EnvSplit(2, 9991, trialSeed: 1);
        Assert.Equal(1998, o.Length);   // int(9991 * 0.2)
        Assert.Equal(Enumerable.Range(0, 9991), o.Concat(i).Order());
        var (o0, _) = Splits.EnvSplit(0, 1, 0);
        Assert.Empty(o0);
    }

    [Fact]
    public void SeedsOutsideNumpysRangeAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Splits.Permutation(3, -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => Splits.Permutation(3, 1L << 32));
        Assert.Equal(3, Splits.Permutation(3, uint.MaxValue).Length);
    }

    [Fact]
    public void Mt19937MatchesTheReferenceOutputs()
    {
        // init_genrand(5489), the reference implementation's default seed: the 10000th output is 4123659995.
        var mt = new Mt19937(5489);
        uint v = 0;
        for (int k = 0; k < 10000; k++) v = mt.NextUInt32();
        Assert.Equal(4123659995u, v);
    }
}
