namespace SfMoe.Analysis;

/// <summary>
/// Expert vs visual attribute (GMoE §5.4, Figure 3): each keypoint (a named part: "beak", "left wing", or for the
/// Synthetic dataset "star/tip_1") is matched to its nearest patches (9 by default) and their top-1 experts are counted
/// into an attribute x expert histogram; <see cref="Normalized"/> divides each row by its sum.
/// </summary>
public sealed class AttributeHistogram
{
    readonly List<string> _attributes = [];
    readonly Dictionary<string, int> _rows = new(StringComparer.Ordinal);
    readonly List<double[]> _counts = [];
    readonly List<int> _keypoints = [];

    /// <summary>Starts an empty histogram; <paramref name="attributes"/> fixes the first rows' order.</summary>
    public AttributeHistogram(int numExperts, IEnumerable<string>? attributes = null)
    {
        if (numExperts < 1) throw new ArgumentOutOfRangeException(nameof(numExperts));
        NumExperts = numExperts;
        if (attributes is not null) foreach (var a in attributes) Row(a);
    }

    /// <summary>Experts (columns).</summary>
    public int NumExperts { get; }
    /// <summary>Attribute names (rows), in order of first appearance.</summary>
    public IReadOnlyList<string> Attributes => _attributes;
    /// <summary>Keypoints counted per attribute.</summary>
    public IReadOnlyList<int> KeypointCounts => _keypoints;

    int Row(string attribute)
    {
        if (_rows.TryGetValue(attribute, out var i)) return i;
        _rows[attribute] = _attributes.Count;
        _attributes.Add(attribute);
        _counts.Add(new double[NumExperts]);
        _keypoints.Add(0);
        return _attributes.Count - 1;
    }

    /// <summary>Counts one patch's top-1 expert for an attribute.</summary>
    public void Add(string attribute, int expert, double weight = 1)
    {
        if (expert < 0 || expert >= NumExperts) throw new ArgumentOutOfRangeException(nameof(expert), $"expert {expert} is outside 0..{NumExperts - 1}");
        _counts[Row(attribute)][expert] += weight;
    }

    /// <summary>
    /// Counts a keypoint at (<paramref name="x"/>, <paramref name="y"/>) in model-input pixels: the top-1 experts of its
    /// <paramref name="patches"/> nearest patches (<see cref="PatchGrid.Nearest"/>). <paramref name="top1"/> holds the image's
    /// top-1 expert per patch, row-major.
    /// </summary>
    public void AddKeypoint(string attribute, double x, double y, ReadOnlySpan<int> top1, PatchGrid grid, int patches = 9)
    {
        if (top1.Length != grid.Count) throw new ArgumentException($"expected {grid.Count} patch experts, got {top1.Length}");
        int row = Row(attribute);
        foreach (var p in grid.Nearest(x, y, patches)) Add(attribute, top1[p]);
        _keypoints[row]++;
    }

    /// <summary>(attributes, E) patch counts.</summary>
    public double[,] Counts
    {
        get
        {
            var m = new double[_attributes.Count, NumExperts];
            for (int i = 0; i < _attributes.Count; i++) for (int e = 0; e < NumExperts; e++) m[i, e] = _counts[i][e];
            return m;
        }
    }

    /// <summary>(attributes, E) with each row divided by its sum (all zero for an attribute never seen).</summary>
    public double[,] Normalized
    {
        get
        {
            var m = Counts;
            for (int i = 0; i < m.GetLength(0); i++)
            {
                double s = 0;
                for (int e = 0; e < NumExperts; e++) s += m[i, e];
                for (int e = 0; e < NumExperts; e++) m[i, e] = s > 0 ? m[i, e] / s : 0;
            }
            return m;
        }
    }

    /// <summary>Maps a point from a stored image's pixels (width x height) to the model's input pixels (eval transform:
    /// the whole image resized to the model's size, no crop).</summary>
    public static (double X, double Y) ToModelInput(double x, double y, int imageWidth, int imageHeight, int inputWidth, int inputHeight) =>
        (x * inputWidth / imageWidth, y * inputHeight / imageHeight);
}
