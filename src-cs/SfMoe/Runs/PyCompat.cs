using System.Globalization;
using System.Numerics;
using System.Text;

namespace SfMoe.Runs;

/// <summary>
/// The floating-point operations of DomainBed's reporting, bit for bit: numpy's pairwise summation (np.sum, np.mean,
/// np.std with ddof 0 on float64), Python's sequential built-in sum (3.11 and earlier) and Python's "{:.Nf}" format
/// (correct rounding of the exact binary value, ties to even).
/// </summary>
internal static class PyNum
{
    /// <summary>numpy's pairwise_sum for contiguous float64, as np.add.reduce calls it (initial value 0.0).</summary>
    public static double Sum(ReadOnlySpan<double> a) => 0.0 + Pairwise(a);

    static double Pairwise(ReadOnlySpan<double> a)
    {
        int n = a.Length;
        if (n < 8)
        {
            double res = 0.0;
            for (int i = 0; i < n; i++) res += a[i];
            return res;
        }
        if (n <= 128)
        {
            double r0 = a[0], r1 = a[1], r2 = a[2], r3 = a[3], r4 = a[4], r5 = a[5], r6 = a[6], r7 = a[7];
            int i;
            for (i = 8; i < n - n % 8; i += 8)
            {
                r0 += a[i]; r1 += a[i + 1]; r2 += a[i + 2]; r3 += a[i + 3];
                r4 += a[i + 4]; r5 += a[i + 5]; r6 += a[i + 6]; r7 += a[i + 7];
            }
            double res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7));
            for (; i < n; i++) res += a[i];
            return res;
        }
        int n2 = n / 2;
        n2 -= n2 % 8;
        return Pairwise(a[..n2]) + Pairwise(a[n2..]);
    }

    /// <summary>np.mean of a float64 vector (NaN when empty, as numpy).</summary>
    public static double Mean(ReadOnlySpan<double> a) => a.Length == 0 ? double.NaN : Sum(a) / a.Length;

    /// <summary>np.std with ddof 0: sqrt(sum((x - mean)^2) / n).</summary>
    public static double Std(ReadOnlySpan<double> a)
    {
        if (a.Length == 0) return double.NaN;
        double mean = Mean(a);
        var d = new double[a.Length];
        for (int i = 0; i < a.Length; i++) { double t = a[i] - mean; d[i] = t * t; }
        return Math.Sqrt(Sum(d) / a.Length);
    }

    /// <summary>Python's built-in sum over floats, left to right from 0 (Python 3.11 and earlier; 3.12 compensates).</summary>
    public static double PySum(IEnumerable<double> values)
    {
        double s = 0.0;
        foreach (var v in values) s += v;
        return s;
    }

    /// <summary>Python's format(x, ".{decimals}f"): the exact binary value rounded half to even; "nan", "inf", "-0.0".</summary>
    public static string Fixed(double x, int decimals)
    {
        if (double.IsNaN(x)) return "nan";
        if (double.IsPositiveInfinity(x)) return "inf";
        if (double.IsNegativeInfinity(x)) return "-inf";
        bool negative = double.IsNegative(x);
        long bits = BitConverter.DoubleToInt64Bits(Math.Abs(x));
        int exp = (int)((bits >> 52) & 0x7FF);
        long mant = bits & 0xF_FFFF_FFFF_FFFFL;
        if (exp == 0) exp = 1; else mant |= 1L << 52;
        exp -= 1075;                                   // |x| = mant * 2^exp exactly
        BigInteger scaled = new BigInteger(mant) * BigInteger.Pow(10, decimals);
        BigInteger q;
        if (exp >= 0) q = scaled << exp;
        else
        {
            BigInteger den = BigInteger.One << -exp;
            q = BigInteger.DivRem(scaled, den, out var rem);
            int c = (rem * 2).CompareTo(den);
            if (c > 0 || (c == 0 && !q.IsEven)) q += 1;
        }
        string digits = q.ToString(CultureInfo.InvariantCulture).PadLeft(decimals + 1, '0');
        var sb = new StringBuilder();
        if (negative) sb.Append('-');
        if (decimals == 0) sb.Append(digits);
        else sb.Append(digits, 0, digits.Length - decimals).Append('.').Append(digits, digits.Length - decimals, decimals);
        return sb.ToString();
    }

    /// <summary>Shortest round-trip text of a double (Python's repr for the values met here), invariant culture.</summary>
    public static string Repr(double x) =>
        double.IsNaN(x) ? "nan" : double.IsInfinity(x) ? (x > 0 ? "inf" : "-inf") : x.ToString("R", CultureInfo.InvariantCulture);
}

/// <summary>A JSON syntax error at a 1-based column.</summary>
internal sealed class PyJsonException(string message, int column) : FormatException(message)
{
    public int Column { get; } = column;
}

/// <summary>
/// JSON as Python's json.loads reads it: the NaN, Infinity and -Infinity literals that json.dumps writes (a diverged
/// loss), integers without a fraction or exponent (long, or double when too large), duplicate keys (the last value
/// wins, at the first key's position), objects as insertion-ordered dictionaries, arrays as lists.
/// </summary>
internal sealed class PyJson
{
    readonly string s;
    int i;

    PyJson(string text) { s = text; }

    public static object? Parse(string text)
    {
        var p = new PyJson(text);
        p.SkipWs();
        var v = p.Value();
        p.SkipWs();
        if (p.i < p.s.Length) p.Fail("extra data after the JSON value");
        return v;
    }

    void Fail(string what) => throw new PyJsonException($"{what} at column {i + 1}", i + 1);

    void SkipWs()
    {
        while (i < s.Length && s[i] is ' ' or '\t' or '\n' or '\r') i++;
    }

    bool Lit(string word)
    {
        if (string.CompareOrdinal(s, i, word, 0, word.Length) != 0) return false;
        i += word.Length;
        return true;
    }

    object? Value()
    {
        if (i >= s.Length) Fail("unexpected end of data");
        char c = s[i];
        switch (c)
        {
            case '{': return Obj();
            case '[': return Arr();
            case '"': return Str();
            case 't': if (Lit("true")) return true; break;
            case 'f': if (Lit("false")) return false; break;
            case 'n': if (Lit("null")) return null; break;
            case 'N': if (Lit("NaN")) return double.NaN; break;
            case 'I': if (Lit("Infinity")) return double.PositiveInfinity; break;
            case '-':
                if (Lit("-Infinity")) return double.NegativeInfinity;
                return Num();
            default:
                if (c is >= '0' and <= '9') return Num();
                break;
        }
        Fail($"unexpected character '{c}'");
        return null;
    }

    Dictionary<string, object?> Obj()
    {
        var d = new Dictionary<string, object?>(StringComparer.Ordinal);
        i++;
        SkipWs();
        if (i < s.Length && s[i] == '}') { i++; return d; }
        while (true)
        {
            SkipWs();
            if (i >= s.Length || s[i] != '"') Fail("expected a property name in double quotes");
            string key = Str();
            SkipWs();
            if (i >= s.Length || s[i] != ':') Fail("expected ':'");
            i++;
            SkipWs();
            d[key] = Value();
            SkipWs();
            if (i >= s.Length) Fail("unexpected end of data in an object");
            if (s[i] == ',') { i++; continue; }
            if (s[i] == '}') { i++; return d; }
            Fail("expected ',' or '}'");
        }
    }

    List<object?> Arr()
    {
        var l = new List<object?>();
        i++;
        SkipWs();
        if (i < s.Length && s[i] == ']') { i++; return l; }
        while (true)
        {
            SkipWs();
            l.Add(Value());
            SkipWs();
            if (i >= s.Length) Fail("unexpected end of data in an array");
            if (s[i] == ',') { i++; continue; }
            if (s[i] == ']') { i++; return l; }
            Fail("expected ',' or ']'");
        }
    }

    string Str()
    {
        i++;
        var sb = new StringBuilder();
        while (true)
        {
            if (i >= s.Length) Fail("unterminated string");
            char c = s[i++];
            if (c == '"') return sb.ToString();
            if (c < ' ') { i--; Fail("invalid control character in a string"); }
            if (c != '\\') { sb.Append(c); continue; }
            if (i >= s.Length) Fail("unterminated string");
            char e = s[i++];
            switch (e)
            {
                case '"': sb.Append('"'); break;
                case '\\': sb.Append('\\'); break;
                case '/': sb.Append('/'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'n': sb.Append('\n'); break;
                case 'r': sb.Append('\r'); break;
                case 't': sb.Append('\t'); break;
                case 'u':
                    int code = 0;
                    if (i + 4 > s.Length || !int.TryParse(s.AsSpan(i, 4), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out code))
                        Fail("invalid \\u escape");
                    sb.Append((char)code);
                    i += 4;
                    break;
                default: i--; Fail($"invalid escape '\\{e}'"); break;
            }
        }
    }

    object Num()
    {
        int start = i;
        if (s[i] == '-') i++;
        if (i >= s.Length || s[i] is < '0' or > '9') Fail("expected a digit");
        if (s[i] == '0') i++;
        else while (i < s.Length && s[i] is >= '0' and <= '9') i++;
        bool isFloat = false;
        if (i < s.Length && s[i] == '.' && i + 1 < s.Length && s[i + 1] is >= '0' and <= '9')
        {
            isFloat = true;
            i++;
            while (i < s.Length && s[i] is >= '0' and <= '9') i++;
        }
        if (i < s.Length && s[i] is 'e' or 'E')
        {
            int save = i;
            i++;
            if (i < s.Length && s[i] is '+' or '-') i++;
            if (i < s.Length && s[i] is >= '0' and <= '9')
            {
                isFloat = true;
                while (i < s.Length && s[i] is >= '0' and <= '9') i++;
            }
            else i = save;   // Python: "1e" is the number 1 followed by extra data
        }
        var text = s.AsSpan(start, i - start);
        if (!isFloat && long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long l)) return l;
        return double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture);
    }
}
