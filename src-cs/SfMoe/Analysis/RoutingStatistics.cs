namespace SfMoe.Analysis;

/// <summary>
/// Routing statistics of one sparse block accumulated over batches. Every token counts (prefix tokens included, as
/// in the balance loss and the trainer's load):
/// <list type="bullet">
/// <item><b>top-1 load</b>: fraction of tokens whose router top-1 is each expert;</item>
/// <item><b>top-k load</b>: fraction of all k choices per expert (before the second-expert policy and capacity);</item>
/// <item><b>processed load</b>: fraction of the processed (kept) choices per expert;</item>
/// <item><b>dropped-token fraction</b>: tokens none of whose choices was processed (they pass on the residual only);</item>
/// <item><b>router entropy</b>: mean over tokens of -Σ p ln p of the router probabilities (nats; also divided by ln E);</item>
/// <item><b>top-1 margin</b>: mean over tokens of the largest minus the second-largest probability;</item>
/// <item><b>usage per domain and per class</b>: top-1 load of the tokens of each environment's / class's images.</item>
/// </list>
/// </summary>
public sealed class RoutingStatistics
{
    readonly double[] _top1, _topk, _processed;
    readonly double[,] _byDomain, _byClass;
    double _tokens, _dropped, _entropy, _margin;

    /// <summary>Starts empty statistics for a block.</summary>
    public RoutingStatistics(int block, int numExperts, int topK, IReadOnlyList<string> domains, IReadOnlyList<string> classes)
    {
        if (numExperts < 1) throw new ArgumentOutOfRangeException(nameof(numExperts));
        Block = block; NumExperts = numExperts; TopK = topK; Domains = domains; Classes = classes;
        _top1 = new double[numExperts]; _topk = new double[numExperts]; _processed = new double[numExperts];
        _byDomain = new double[Math.Max(domains.Count, 0), numExperts];
        _byClass = new double[Math.Max(classes.Count, 0), numExperts];
    }

    /// <summary>Block index.</summary>
    public int Block { get; }
    /// <summary>Experts E.</summary>
    public int NumExperts { get; }
    /// <summary>Choices per token.</summary>
    public int TopK { get; }
    /// <summary>Domain (environment) names, the rows of <see cref="UsageByDomain"/>.</summary>
    public IReadOnlyList<string> Domains { get; }
    /// <summary>Class names, the rows of <see cref="UsageByClass"/>.</summary>
    public IReadOnlyList<string> Classes { get; }
    /// <summary>Capacity per group and expert seen last (-1 dropless).</summary>
    public long Capacity { get; private set; } = -1;
    /// <summary>Images added.</summary>
    public int Images { get; private set; }
    /// <summary>Tokens added.</summary>
    public long Tokens => (long)_tokens;

    /// <summary>
    /// Adds a batch. <paramref name="domains"/> and <paramref name="labels"/> give each image's environment and class
    /// index (or null, or -1 for an image, to leave it out of those tables).
    /// </summary>
    public void Add(RoutingData r, IReadOnlyList<int>? domains = null, IReadOnlyList<int>? labels = null)
    {
        if (r.NumExperts != NumExperts) throw new ArgumentException($"block {Block}: expected {NumExperts} experts, the record has {r.NumExperts}");
        int e = NumExperts, k = r.TopK;
        Capacity = r.Capacity;
        Images += r.Batch;
        for (int b = 0; b < r.Batch; b++)
        {
            int dom = domains is null ? -1 : domains[b], cls = labels is null ? -1 : labels[b];
            for (int n = 0; n < r.Tokens; n++)
            {
                int t = b * r.Tokens + n;
                int top1 = r.Index[t * k];
                _top1[top1]++;
                if (dom >= 0 && dom < _byDomain.GetLength(0)) _byDomain[dom, top1]++;
                if (cls >= 0 && cls < _byClass.GetLength(0)) _byClass[cls, top1]++;
                bool any = false;
                for (int j = 0; j < k; j++)
                {
                    int x = r.Index[t * k + j];
                    _topk[x]++;
                    if (r.Kept[t * k + j]) { _processed[x]++; any = true; }
                }
                if (!any) _dropped++;
                double h = 0, p1 = double.NegativeInfinity, p2 = double.NegativeInfinity;
                for (int x = 0; x < e; x++)
                {
                    double p = r.Probs[t * e + x];
                    if (p > 0) h -= p * Math.Log(p);
                    if (p > p1) { p2 = p1; p1 = p; }
                    else if (p > p2) p2 = p;
                }
                _entropy += h;
                _margin += e > 1 ? p1 - p2 : 1.0;
                _tokens++;
            }
        }
    }

    static double[] Fractions(double[] v) { double s = v.Sum(); return v.Select(x => s > 0 ? x / s : 0).ToArray(); }

    static double[,] RowFractions(double[,] m)
    {
        var r = new double[m.GetLength(0), m.GetLength(1)];
        for (int i = 0; i < m.GetLength(0); i++)
        {
            double s = 0;
            for (int j = 0; j < m.GetLength(1); j++) s += m[i, j];
            for (int j = 0; j < m.GetLength(1); j++) r[i, j] = s > 0 ? m[i, j] / s : 0;
        }
        return r;
    }

    /// <summary>Per expert, the fraction of tokens whose top-1 it is (sums to 1).</summary>
    public double[] Top1Load => Fractions(_top1);
    /// <summary>Per expert, its fraction of all k choices (sums to 1).</summary>
    public double[] TopKLoad => Fractions(_topk);
    /// <summary>Per expert, its fraction of the processed choices (sums to 1 unless everything was dropped).</summary>
    public double[] ProcessedLoad => Fractions(_processed);
    /// <summary>Per expert, the number of processed (token, choice) pairs.</summary>
    public double[] ProcessedCounts => (double[])_processed.Clone();
    /// <summary>Fraction of tokens none of whose choices was processed.</summary>
    public double DroppedTokenFraction => _tokens > 0 ? _dropped / _tokens : 0;
    /// <summary>Mean router entropy per token, in nats.</summary>
    public double RouterEntropy => _tokens > 0 ? _entropy / _tokens : 0;
    /// <summary>Mean router entropy divided by ln E (1 = uniform, 0 = one-hot); 0 when E = 1.</summary>
    public double NormalizedEntropy => NumExperts > 1 ? RouterEntropy / Math.Log(NumExperts) : 0;
    /// <summary>Mean of (largest - second-largest router probability) per token.</summary>
    public double Top1Margin => _tokens > 0 ? _margin / _tokens : 0;
    /// <summary>(domains, E): each domain's top-1 load (rows sum to 1, or 0 for a domain without tokens).</summary>
    public double[,] UsageByDomain => RowFractions(_byDomain);
    /// <summary>(classes, E): each class's top-1 load.</summary>
    public double[,] UsageByClass => RowFractions(_byClass);
}
