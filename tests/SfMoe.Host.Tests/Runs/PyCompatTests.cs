using SfMoe.Runs;

namespace SfMoe.Host.Tests.Runs;

/// <summary>Python/numpy arithmetic and formatting, and Python-compatible JSON, bit for bit.</summary>
public class PyCompatTests
{
    [Theory]
    // Exact binary ties round half to even (Python), where .NET's "F1" rounds away from zero:
    [InlineData(81.25, 1, "81.2")]
    [InlineData(0.125, 2, "0.12")]
    [InlineData(0.25, 1, "0.2")]
    // Not ties: the binary value decides (2.675 is 2.67499999..., 0.05 is 0.0500000000000000027...).
    [InlineData(2.675, 2, "2.67")]
    [InlineData(0.05, 1, "0.1")]
    [InlineData(0.35, 1, "0.3")]
    [InlineData(9.95, 1, "9.9")]
    [InlineData(99.95, 1, "100.0")]
    [InlineData(-0.0, 1, "-0.0")]
    [InlineData(-0.04, 1, "-0.0")]
    [InlineData(1e20, 1, "100000000000000000000.0")]
    [InlineData(5e-324, 1, "0.0")]
    [InlineData(62.500000000000014, 1, "62.5")]
    [InlineData(7.0, 0, "7")]
    public void FixedMatchesPythonFormat(double x, int decimals, string expected) =>
        Assert.Equal(expected, PyNum.Fixed(x, decimals));

    [Fact]
    public void FixedSpellsNonFiniteValuesAsPython()
    {
        Assert.Equal("nan", PyNum.Fixed(double.NaN, 1));
        Assert.Equal("inf", PyNum.Fixed(double.PositiveInfinity, 1));
        Assert.Equal("-inf", PyNum.Fixed(double.NegativeInfinity, 1));
    }

    [Fact]
    public void SumIsNumpysPairwiseSum()
    {
        // numpy 1.24: np.sum([0.1]*10) == 1.0 (8 partial sums), Python's sum gives 0.9999999999999999.
        var tenths = Enumerable.Repeat(0.1, 10).ToArray();
        Assert.Equal(1.0, PyNum.Sum(tenths));
        Assert.Equal(0.9999999999999999, PyNum.PySum(tenths));
        // 199 elements take the recursive split: np.sum([0.1*i for i in range(1,200)]) == 1990.0; left to right 1990.0000000000002.
        var many = Enumerable.Range(1, 199).Select(i => 0.1 * i).ToArray();
        Assert.Equal(1990.0, PyNum.Sum(many));
        Assert.Equal(1990.0000000000002, PyNum.PySum(many));
        // np.mean([0.3, 0.1, 0.7]) == 0.3666666666666667, np.std(...) == 0.2494438257849294.
        Assert.Equal(0.3666666666666667, PyNum.Mean([0.3, 0.1, 0.7]));
        Assert.Equal(0.2494438257849294, PyNum.Std([0.3, 0.1, 0.7]));
        Assert.True(double.IsNaN(PyNum.Mean([])));
    }

    [Fact]
    public void JsonReadsWhatPythonsJsonDumpsWrites()
    {
        var v = (Dictionary<string, object?>)PyJson.Parse(
            "{\"a\": NaN, \"b\": Infinity, \"c\": -Infinity, \"d\": [1, 2.5, -3e2, true, null], \"e\": \"x\\u00e9\\n\\\"\", \"a\": 7}")!;
        Assert.Equal(7L, v["a"]);                  // duplicate key: the last value wins
        Assert.Equal(["a", "b", "c", "d", "e"], v.Keys);   // at the first key's position
        Assert.Equal(double.PositiveInfinity, v["b"]);
        Assert.Equal(double.NegativeInfinity, v["c"]);
        Assert.Equal(new object?[] { 1L, 2.5, -300.0, true, null }, (List<object?>)v["d"]!);
        Assert.Equal("xé\n\"", v["e"]);
        Assert.True(double.IsNaN((double)((Dictionary<string, object?>)PyJson.Parse("{\"x\": NaN}")!)["x"]!));
    }

    [Theory]
    [InlineData("{\"a\": 1", "unexpected end of data in an object at column 8")]
    [InlineData("{\"a\": 1} x", "extra data after the JSON value at column 10")]
    [InlineData("{\"a\": nan}", "unexpected character 'n' at column 7")]
    [InlineData("{'a': 1}", "expected a property name in double quotes at column 2")]
    [InlineData("[1,]", "unexpected character ']' at column 4")]
    public void JsonErrorsNameTheColumn(string text, string message) =>
        Assert.Equal(message, Assert.Throws<PyJsonException>(() => PyJson.Parse(text)).Message);
}
