using Microsoft.FSharp.Collections;
using CorePattern = SfMoe.Core.Pattern;

namespace SfMoe;

/// <summary>A parsed block pattern.</summary>
/// <param name="Canonical">The canonical text, e.g. <c>[S,F]x6</c>.</param>
/// <param name="Blocks">The expanded block kinds, shallow to deep: "S" (sparse: attention + MoE) or "F" (fusion: attention + dense FFN).</param>
public sealed record PatternInfo(string Canonical, IReadOnlyList<string> Blocks)
{
    /// <summary>Number of blocks.</summary>
    public int Depth => Blocks.Count;
}

/// <summary>The block-pattern language: <c>[S,F]x6</c>, <c>Fx5,S,Fx5,S</c>, <c>SFSF</c>, presets such as <c>sfmoe</c>.</summary>
public static class Patterns
{
    /// <summary>Parses a pattern or a preset name.</summary>
    /// <exception cref="SfMoeException">The pattern is invalid; the message names the column and what was expected.</exception>
    public static PatternInfo Parse(string pattern)
    {
        var r = CorePattern.resolve(pattern);
        if (r.IsError) throw new ConfigException(r.ErrorValue.ToString());
        return Info(r.ResultValue);
    }

    /// <summary>Parses a pattern and checks that it has exactly <paramref name="depth"/> blocks.</summary>
    /// <exception cref="SfMoeException">The pattern is invalid or has another length.</exception>
    public static PatternInfo Parse(string pattern, int depth)
    {
        var info = Parse(pattern);
        var v = CorePattern.validateDepth(depth, CorePattern.parseOrFail(info.Canonical));
        if (v.IsError) throw new ConfigException(v.ErrorValue);
        return info;
    }

    /// <summary>The named presets: name, pattern, description.</summary>
    public static IReadOnlyList<(string Name, string Pattern, string Description)> Presets =>
        CorePattern.presets.Select(t => (t.Item1, t.Item2, t.Item3)).ToList();

    internal static PatternInfo Info(CorePattern.Pattern p) =>
        new(CorePattern.print(p), CorePattern.expand(p).Select(CorePattern.BlockKindModule.letter).ToList());
}
