using System.Collections;
using System.Globalization;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;

namespace SfMoe.Data;

/// <summary>
/// DomainBed's in/out splits, bit-exact: <c>misc.seed_hash</c> (md5 of the Python repr of the argument tuple) and
/// <c>misc.split_dataset</c> (<c>numpy.random.RandomState(seed).shuffle</c> of <c>range(len)</c>, first n = out).
/// </summary>
public static class Splits
{
    /// <summary>DomainBed's <c>holdout_fraction</c> default: 20% of every environment is its out-split.</summary>
    public const double DefaultHoldout = 0.2;

    /// <summary>
    /// <c>seed_hash(*args)</c> = int(md5(str(args)).hexdigest(), 16) % 2**31, where str(args) is the Python tuple repr:
    /// <c>SeedHash(0, 1)</c> hashes "(0, 1)", <c>SeedHash(5)</c> hashes "(5,)", strings are quoted as Python's repr does
    /// ("('PACS', 0)"), lists (any IEnumerable but string) print as "[0, 1]", and C# tuples as Python tuples.
    /// </summary>
    public static int SeedHash(params object?[] args) => SeedHashOfRepr(PyRepr(new PyTuple(args)));

    /// <summary>seed_hash of an already formatted Python repr string.</summary>
    public static int SeedHashOfRepr(string repr)
    {
        var digest = MD5.HashData(Encoding.UTF8.GetBytes(repr));
        // int(hexdigest, 16) is the digest read big-endian; mod 2^31 keeps its low 31 bits.
        uint low = (uint)(digest[12] << 24 | digest[13] << 16 | digest[14] << 8 | digest[15]);
        return (int)(low & 0x7fffffff);
    }

    /// <summary>The permutation <c>keys = list(range(length)); np.random.RandomState(seed).shuffle(keys)</c>.</summary>
    public static int[] Permutation(int length, long seed)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), length, "length must be >= 0");
        var keys = new int[length];
        for (int i = 0; i < length; i++) keys[i] = i;
        new Mt19937(CheckSeed(seed)).Shuffle(keys);
        return keys;
    }

    /// <summary>
    /// <c>split_dataset(dataset, n, seed)</c>: the indices of a dataset of <paramref name="length"/> samples shuffled with
    /// numpy's legacy RandomState(seed); the first <paramref name="n"/> form <c>First</c>, the rest <c>Remainder</c>.
    /// </summary>
    public static (int[] First, int[] Remainder) SplitDataset(int length, int n, long seed)
    {
        if (n < 0 || n > length) throw new ArgumentOutOfRangeException(nameof(n), n, $"n must be within 0..{length}");
        var keys = Permutation(length, seed);
        return (keys[..n], keys[n..]);
    }

    /// <summary>
    /// The split DomainBed's train.py makes of environment <paramref name="envIndex"/>:
    /// <c>out, in_ = split_dataset(env, int(len(env) * holdout), seed_hash(trial_seed, env_i))</c>.
    /// <c>Out</c> (validation, 20%) and <c>In</c> (training / test accuracy, 80%) are indices into the environment.
    /// </summary>
    public static (int[] Out, int[] In) EnvSplit(int envIndex, int count, int trialSeed, double holdout = DefaultHoldout)
    {
        if (holdout is < 0 or > 1 || double.IsNaN(holdout))
            throw new ArgumentOutOfRangeException(nameof(holdout), holdout, "holdout must be within [0, 1]");
        int n = (int)(count * holdout);   // Python int() truncates toward zero, as the cast does
        var (first, rest) = SplitDataset(count, n, SeedHash(trialSeed, envIndex));
        return (first, rest);
    }

    static uint CheckSeed(long seed) =>
        seed is < 0 or > uint.MaxValue
            ? throw new ArgumentOutOfRangeException(nameof(seed), seed, "Seed must be between 0 and 2**32 - 1 (as numpy requires)")
            : (uint)seed;

    /// <summary>A tuple for <see cref="PyRepr"/>: prints as "(a, b)", or "(a,)" with one element.</summary>
    internal sealed record PyTuple(IReadOnlyList<object?> Items);

    /// <summary>
    /// Python's <c>repr()</c> of a value: integers, bool (True/False), null (None), float (shortest round trip, Python's
    /// exponent rules), string (Python's quoting and escapes), <see cref="PyTuple"/> and C# tuples (tuples),
    /// other IEnumerables (lists).
    /// </summary>
    public static string PyRepr(object? value)
    {
        var sb = new StringBuilder();
        AppendRepr(sb, value);
        return sb.ToString();
    }

    static void AppendRepr(StringBuilder sb, object? v)
    {
        switch (v)
        {
            case null: sb.Append("None"); break;
            case bool b: sb.Append(b ? "True" : "False"); break;
            case string s: AppendStringRepr(sb, s); break;
            case char c: AppendStringRepr(sb, c.ToString()); break;
            case double d: sb.Append(FloatRepr(d)); break;
            case float f: sb.Append(FloatRepr(f)); break;
            case decimal m: sb.Append(FloatRepr((double)m)); break;
            case sbyte or byte or short or ushort or int or uint or long or ulong or BigInteger:
                sb.Append(Convert.ToString(v, CultureInfo.InvariantCulture)); break;
            case Enum e: sb.Append(Convert.ToInt64(e, CultureInfo.InvariantCulture).ToString(CultureInfo.InvariantCulture)); break;
            case PyTuple t: AppendTuple(sb, t.Items); break;
            case ITuple t:
                var items = new object?[t.Length];
                for (int i = 0; i < t.Length; i++) items[i] = t[i];
                AppendTuple(sb, items);
                break;
            case IEnumerable list:
                sb.Append('[');
                bool first = true;
                foreach (var x in list)
                {
                    if (!first) sb.Append(", ");
                    AppendRepr(sb, x);
                    first = false;
                }
                sb.Append(']');
                break;
            default: throw new ArgumentException($"no Python repr for a value of type {v.GetType().Name}");
        }
    }

    static void AppendTuple(StringBuilder sb, IReadOnlyList<object?> items)
    {
        sb.Append('(');
        for (int i = 0; i < items.Count; i++)
        {
            if (i > 0) sb.Append(", ");
            AppendRepr(sb, items[i]);
        }
        if (items.Count == 1) sb.Append(',');
        sb.Append(')');
    }

    /// <summary>Python 3's str.__repr__: single quotes unless the text has ' and no ", backslash escapes, \xNN / \uNNNN / \UNNNNNNNN for non-printables.</summary>
    static void AppendStringRepr(StringBuilder sb, string s)
    {
        char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        sb.Append(quote);
        foreach (var r in s.EnumerateRunes())
        {
            int c = r.Value;
            if (c == quote || c == '\\') sb.Append('\\').Append((char)c);
            else if (c == '\t') sb.Append("\\t");
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (c < 0x20 || c == 0x7f) sb.Append("\\x").Append(c.ToString("x2", CultureInfo.InvariantCulture));
            else if (c < 0x7f) sb.Append((char)c);
            else if (IsPrintable(r)) sb.Append(r.ToString());
            else if (c <= 0xff) sb.Append("\\x").Append(c.ToString("x2", CultureInfo.InvariantCulture));
            else if (c <= 0xffff) sb.Append("\\u").Append(c.ToString("x4", CultureInfo.InvariantCulture));
            else sb.Append("\\U").Append(c.ToString("x8", CultureInfo.InvariantCulture));
        }
        sb.Append(quote);
    }

    /// <summary>Python's str.isprintable for one character: not Cc, Cf, Cs, Co, Cn, Zl, Zp, nor a space separator other than ' '.</summary>
    static bool IsPrintable(Rune r) => Rune.GetUnicodeCategory(r) switch
    {
        UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate or UnicodeCategory.PrivateUse
            or UnicodeCategory.OtherNotAssigned or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator
            or UnicodeCategory.SpaceSeparator => false,
        _ => true,
    };

    /// <summary>Python's float repr: shortest round-trip digits; fixed notation for 1e-4 &lt;= |x| &lt; 1e16, else d.ddde±XX.</summary>
    static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsPositiveInfinity(d)) return "inf";
        if (double.IsNegativeInfinity(d)) return "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        // .NET's "E16" is not shortest; "R" is. Parse R's output into digits and a decimal exponent.
        string r = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        string mantissa = r;
        int exp10 = 0;
        int ePos = r.IndexOfAny(['E', 'e']);
        if (ePos >= 0)
        {
            mantissa = r[..ePos];
            exp10 = int.Parse(r[(ePos + 1)..], CultureInfo.InvariantCulture);
        }
        int dot = mantissa.IndexOf('.');
        string intPart = dot >= 0 ? mantissa[..dot] : mantissa;
        string fracPart = dot >= 0 ? mantissa[(dot + 1)..] : "";
        string digits = (intPart + fracPart).TrimStart('0');
        int leadingZeros = (intPart + fracPart).Length - (intPart + fracPart).TrimStart('0').Length;
        // value = 0.digits * 10^decpt
        int decpt = intPart.Length + exp10 - leadingZeros;
        digits = digits.TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        var sb = new StringBuilder();
        if (d < 0) sb.Append('-');
        if (decpt > -4 && decpt <= 16)
        {
            if (decpt <= 0) sb.Append("0.").Append('0', -decpt).Append(digits);
            else if (decpt >= digits.Length) sb.Append(digits).Append('0', decpt - digits.Length).Append(".0");
            else sb.Append(digits[..decpt]).Append('.').Append(digits[decpt..]);
        }
        else
        {
            sb.Append(digits[0]);
            if (digits.Length > 1) sb.Append('.').Append(digits[1..]);
            int e = decpt - 1;
            sb.Append('e').Append(e < 0 ? '-' : '+').Append(Math.Abs(e).ToString("00", CultureInfo.InvariantCulture));
        }
        return sb.ToString();
    }
}

/// <summary>
/// The Mersenne Twister MT19937 as numpy's legacy <c>RandomState(int)</c> seeds it (<c>init_genrand</c>), with numpy's
/// <c>random_interval</c> (masked rejection sampling on 32-bit draws) and the legacy Fisher-Yates <c>shuffle</c>.
/// Bit-exact with numpy for seeds 0 .. 2^32-1. Not thread-safe.
/// </summary>
internal sealed class Mt19937
{
    const int N = 624, M = 397;
    const uint MatrixA = 0x9908b0df, UpperMask = 0x80000000, LowerMask = 0x7fffffff;
    readonly uint[] _mt = new uint[N];
    int _pos;

    /// <summary>Seeds as <c>np.random.RandomState(seed)</c>.</summary>
    public Mt19937(uint seed)
    {
        _mt[0] = seed;
        for (int i = 1; i < N; i++) _mt[i] = 1812433253u * (_mt[i - 1] ^ (_mt[i - 1] >> 30)) + (uint)i;
        _pos = N;
    }

    /// <summary>The next 32-bit output (genrand_int32).</summary>
    public uint NextUInt32()
    {
        if (_pos >= N) Generate();
        uint y = _mt[_pos++];
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c5680;
        y ^= (y << 15) & 0xefc60000;
        y ^= y >> 18;
        return y;
    }

    void Generate()
    {
        int k;
        uint y;
        for (k = 0; k < N - M; k++)
        {
            y = (_mt[k] & UpperMask) | (_mt[k + 1] & LowerMask);
            _mt[k] = _mt[k + M] ^ (y >> 1) ^ ((y & 1) != 0 ? MatrixA : 0);
        }
        for (; k < N - 1; k++)
        {
            y = (_mt[k] & UpperMask) | (_mt[k + 1] & LowerMask);
            _mt[k] = _mt[k + (M - N)] ^ (y >> 1) ^ ((y & 1) != 0 ? MatrixA : 0);
        }
        y = (_mt[N - 1] & UpperMask) | (_mt[0] & LowerMask);
        _mt[N - 1] = _mt[M - 1] ^ (y >> 1) ^ ((y & 1) != 0 ? MatrixA : 0);
        _pos = 0;
    }

    /// <summary>numpy's <c>random_interval(max)</c>: uniform in [0, max] by masking 32-bit draws and rejecting values above max.</summary>
    public uint Interval(uint max)
    {
        if (max == 0) return 0;
        uint mask = max;
        mask |= mask >> 1; mask |= mask >> 2; mask |= mask >> 4; mask |= mask >> 8; mask |= mask >> 16;
        uint value;
        while ((value = NextUInt32() & mask) > max) { }
        return value;
    }

    /// <summary><c>RandomState.shuffle(x)</c>: for i from len-1 down to 1, swap x[i] with x[random_interval(i)].</summary>
    public void Shuffle<T>(T[] items)
    {
        for (int i = items.Length - 1; i >= 1; i--)
        {
            int j = (int)Interval((uint)i);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }
}
