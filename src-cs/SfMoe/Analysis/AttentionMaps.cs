namespace SfMoe.Analysis;

/// <summary>
/// The CLS token's attention over the patches, per head (DINO's visualisation, which SF-MoE's Figure 3 uses), and how
/// redundant a block's heads are.
/// </summary>
public static class AttentionMaps
{
    /// <summary>
    /// DINO's threshold: the smallest set of patches holding at least <paramref name="threshold"/> of the map's mass
    /// (the largest values first; among equal values the lower index first). Returns a mask per patch.
    /// </summary>
    public static bool[] ThresholdMask(ReadOnlySpan<float> map, double threshold)
    {
        if (threshold is < 0 or > 1) throw new ArgumentOutOfRangeException(nameof(threshold), "threshold must be in [0, 1]");
        var keep = new bool[map.Length];
        double total = 0;
        foreach (var v in map) total += Math.Max(0, v);
        if (total <= 0 || threshold == 0) return keep;
        var order = Enumerable.Range(0, map.Length).ToArray();
        var values = map.ToArray();
        Array.Sort(order, (a, b) => values[a] != values[b] ? values[b].CompareTo(values[a]) : a.CompareTo(b));
        double mass = 0, target = threshold * total;
        foreach (var i in order)
        {
            if (mass >= target) break;
            keep[i] = true;
            mass += Math.Max(0, values[i]);
        }
        return keep;
    }

    /// <summary>Cosine similarity of two maps (1 for identical non-zero maps; 0 when either is zero).</summary>
    public static double Similarity(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"maps differ in length: {a.Length} and {b.Length}");
        double ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++) { ab += a[i] * (double)b[i]; aa += a[i] * (double)a[i]; bb += b[i] * (double)b[i]; }
        return aa > 0 && bb > 0 ? ab / Math.Sqrt(aa * bb) : 0;
    }

    /// <summary>
    /// Pearson correlation of two maps: their cosine similarity after subtracting each map's mean, so a uniform floor of
    /// attention does not count as agreement. 1 for identical maps; two flat maps count as 1 (the same pattern), a flat
    /// map and a varying one as 0.
    /// </summary>
    public static double Correlation(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"maps differ in length: {a.Length} and {b.Length}");
        double ma = 0, mb = 0;
        for (int i = 0; i < a.Length; i++) { ma += a[i]; mb += b[i]; }
        ma /= Math.Max(1, a.Length); mb /= Math.Max(1, b.Length);
        double ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++) { double x = a[i] - ma, y = b[i] - mb; ab += x * y; aa += x * x; bb += y * y; }
        const double flat = 1e-18;
        if (aa <= flat && bb <= flat) return 1;
        if (aa <= flat || bb <= flat) return 0;
        return ab / Math.Sqrt(aa * bb);
    }

    /// <summary>The mean Pearson <see cref="Correlation"/> over all pairs of heads (NaN with fewer than two heads): how
    /// much the heads agree on <i>where</i> they look, regardless of how diffuse their attention is.</summary>
    public static double PatternRedundancy(IReadOnlyList<float[]> heads)
    {
        if (heads.Count < 2) return double.NaN;
        double s = 0; int n = 0;
        for (int i = 0; i < heads.Count; i++)
            for (int j = i + 1; j < heads.Count; j++) { s += Correlation(heads[i], heads[j]); n++; }
        return s / n;
    }

    /// <summary>
    /// Head redundancy: the mean cosine similarity over all pairs of heads' maps (1: every head looks at the same
    /// patches; lower: the heads attend to different places). NaN with fewer than two heads. Near-uniform maps (an untrained
    /// model, diffuse heads) score near 1 here; <see cref="PatternRedundancy"/> tells those apart.
    /// </summary>
    public static double Redundancy(IReadOnlyList<float[]> heads)
    {
        if (heads.Count < 2) return double.NaN;
        double s = 0; int n = 0;
        for (int i = 0; i < heads.Count; i++)
            for (int j = i + 1; j < heads.Count; j++) { s += Similarity(heads[i], heads[j]); n++; }
        return s / n;
    }

    /// <summary>The mean over images of <see cref="Redundancy(IReadOnlyList{float[]})"/> of one block's heads in a probed batch.</summary>
    public static double Redundancy(ProbeResult r, int block) =>
        Enumerable.Range(0, r.Batch).Select(b => Redundancy(Enumerable.Range(0, r.Heads).Select(h => r.ClsMap(block, b, h)).ToArray())).Average();
}
