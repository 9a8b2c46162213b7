using System.Globalization;
using ScottPlot;
using SfMoe.Data;
using SfMoe.Imaging;
using SkiaSharp;

namespace SfMoe.Analysis;

/// <summary>A figure: one or more ScottPlot panels laid out in a grid under an optional title. Save it as PNG.</summary>
public sealed class Figure
{
    /// <summary>Creates a figure of <paramref name="panels"/>, <paramref name="columns"/> per row, each
    /// <paramref name="panelWidth"/> x <paramref name="panelHeight"/> pixels.</summary>
    public Figure(IReadOnlyList<Plot> panels, int columns = 1, int panelWidth = 640, int panelHeight = 420, string? title = null)
    {
        if (panels.Count == 0) throw new ArgumentException("a figure needs at least one panel");
        Panels = panels; Columns = Math.Max(1, Math.Min(columns, panels.Count)); PanelWidth = panelWidth; PanelHeight = panelHeight; Title = title;
    }

    /// <summary>The panels, row by row.</summary>
    public IReadOnlyList<Plot> Panels { get; }
    /// <summary>Panels per row.</summary>
    public int Columns { get; }
    /// <summary>Panel width in pixels.</summary>
    public int PanelWidth { get; }
    /// <summary>Panel height in pixels.</summary>
    public int PanelHeight { get; }
    /// <summary>Title above all panels (null: none).</summary>
    public string? Title { get; }

    /// <summary>Width of the whole figure.</summary>
    public int Width => Columns * PanelWidth;
    /// <summary>Height of the whole figure.</summary>
    public int Height => (Panels.Count + Columns - 1) / Columns * PanelHeight + TitleHeight;
    int TitleHeight => Title is null ? 0 : 44;

    /// <summary>The figure as PNG bytes.</summary>
    public byte[] ToPng()
    {
        PlotStyle.Ensure();
        if (Panels.Count == 1 && Title is null) return Panels[0].GetImageBytes(PanelWidth, PanelHeight, ImageFormat.Png);
        var info = new SKImageInfo(Width, Height, SKColorType.Rgba8888, SKAlphaType.Premul);
        using var surface = SKSurface.Create(info);
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        if (Title is not null)
        {
            var tf = Fonts.GetTypeface(PlotStyle.FontName, bold: true, italic: false);   // cached by ScottPlot: not disposed
            using var font = new SKFont(tf, 22);
            using var paint = new SKPaint { Color = SKColors.Black, IsAntialias = true };
            canvas.DrawText(Title, Width / 2f, 30, SKTextAlign.Center, font, paint);
        }
        for (int i = 0; i < Panels.Count; i++)
        {
            int x = i % Columns * PanelWidth, y = i / Columns * PanelHeight + TitleHeight;
            canvas.Save();
            canvas.Translate(x, y);
            canvas.ClipRect(new SKRect(0, 0, PanelWidth, PanelHeight));
            Panels[i].Render(canvas, PanelWidth, PanelHeight);
            canvas.Restore();
        }
        using var img = surface.Snapshot();
        using var data = img.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }

    /// <summary>Writes the figure as a PNG file (creating its folder; a temporary file renamed, never half-written).</summary>
    public void SavePng(string path) => AtomicFile.WriteAllBytes(path, ToPng());

    /// <summary>An HTML &lt;img&gt; with the PNG inline (for notebooks).</summary>
    public string ToHtml() => $"<img src=\"data:image/png;base64,{Convert.ToBase64String(ToPng())}\" width=\"{Width}\" />";
}

/// <summary>
/// The analysis figures (ScottPlot): heatmaps with colour bars, expert maps and attention maps over images, training
/// curves, load bars and head redundancy. Every panel has a title, axis labels and, with several series, a legend.
/// </summary>
public static class Plots
{
    static Plot NewPlot(string title, string xLabel, string yLabel)
    {
        PlotStyle.Ensure();
        var p = new Plot();
        p.Title(title, 15);
        p.XLabel(xLabel, 13);
        p.YLabel(yLabel, 13);
        return p;
    }

    static string F(double v, string fmt = "0.00") => double.IsNaN(v) ? "-" : v.ToString(fmt, CultureInfo.InvariantCulture);

    /// <summary>
    /// A heatmap of <paramref name="values"/> (rows x columns; row 0 at the top) with labelled rows and columns, a colour
    /// bar and (for up to 600 cells) each cell's value written in it.
    /// </summary>
    public static Figure Heatmap(double[,] values, IReadOnlyList<string> rowLabels, IReadOnlyList<string> columnLabels, string title,
        string xLabel, string yLabel, string colorBarLabel, double min = 0, double? max = null)
    {
        int rows = values.GetLength(0), cols = values.GetLength(1);
        if (rowLabels.Count != rows || columnLabels.Count != cols) throw new ArgumentException("labels do not match the heatmap's shape");
        var p = NewPlot(title, xLabel, yLabel);
        double hi = max ?? Math.Max(min + 1e-9, Enumerable.Range(0, rows * cols).Select(i => values[i / cols, i % cols]).Where(double.IsFinite).DefaultIfEmpty(1).Max());
        if (rows > 0 && cols > 0)
        {
            var hm = p.Add.Heatmap(values);
            hm.Colormap = new ScottPlot.Colormaps.Viridis();
            hm.ManualRange = new ScottPlot.Range(min, hi);
            // cells centred on integer coordinates: column j at x = j, row i at y = rows - 1 - i
            hm.Rectangle = new CoordinateRect(-0.5, cols - 0.5, -0.5, rows - 0.5);
            var cb = p.Add.ColorBar(hm);
            cb.Label = colorBarLabel;
            cb.LabelStyle.FontSize = 13;
            if (rows * cols <= 600)
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++)
                    {
                        double v = values[i, j];
                        var t = p.Add.Text(F(v), j, rows - 1 - i);
                        t.Alignment = Alignment.MiddleCenter;
                        t.LabelFontSize = rows > 24 || cols > 12 ? 9 : 12;
                        t.LabelFontColor = (v - min) / (hi - min) > 0.6 ? Colors.Black : Colors.White;
                    }
        }
        p.Axes.Bottom.SetTicks(Enumerable.Range(0, cols).Select(j => (double)j).ToArray(), columnLabels.ToArray());
        p.Axes.Left.SetTicks(Enumerable.Range(0, rows).Select(i => (double)(rows - 1 - i)).ToArray(), rowLabels.ToArray());
        p.Axes.SetLimits(-0.5, cols - 0.5, -0.5, rows - 0.5);
        p.Grid.IsVisible = false;
        int longest = rowLabels.Select(l => l.Length).DefaultIfEmpty(4).Max();
        int width = Math.Max(Math.Max(520, 160 + cols * 70 + longest * 8), 40 + (int)(title.Length * 9.5));
        return new Figure([p], 1, width, Math.Max(300, 150 + rows * 24));
    }

    /// <summary>Bars per expert of a sparse block: top-1, top-k and processed load, with the uniform share as a line.</summary>
    public static Plot LoadBars(RoutingStatistics s)
    {
        var p = NewPlot($"blocks.{s.Block}: expert load (dropped tokens {F(100 * s.DroppedTokenFraction, "0.0")}%)", "expert", "fraction");
        var series = new (string Name, double[] V)[] { ("top-1", s.Top1Load), ($"top-{s.TopK} choices", s.TopKLoad), ("processed", s.ProcessedLoad) };
        double w = 0.8 / series.Length;
        for (int k = 0; k < series.Length; k++)
        {
            var bars = series[k].V.Select((v, e) => new Bar { Position = e - 0.4 + w * (k + 0.5), Value = v, Size = w * 0.95, FillColor = PlotStyle.SeriesColor(k) }).ToArray();
            var bp = p.Add.Bars(bars);
            bp.LegendText = series[k].Name;
        }
        var u = p.Add.HorizontalLine(1.0 / s.NumExperts, 1.5f, Colors.Black, LinePattern.Dashed);
        u.LegendText = "uniform (1/E)";
        p.Axes.Bottom.SetTicks(Enumerable.Range(0, s.NumExperts).Select(e => (double)e).ToArray(), Enumerable.Range(0, s.NumExperts).Select(e => $"e{e}").ToArray());
        p.Axes.SetLimits(-0.6, s.NumExperts - 0.4, 0, Math.Max(1.0 / s.NumExperts, series.Max(t => t.V.DefaultIfEmpty(0).Max())) * 1.25);
        p.ShowLegend(Edge.Right);
        return p;
    }

    static Plot ImagePanel(ImageU8 image, string title)
    {
        var p = NewPlot(title, "x (pixels)", "y (pixels)");
        var img = new ScottPlot.Image(SkiaImages.EncodePng(image.Channels == 3 ? image : ToRgb(image)));
        var ir = p.Add.ImageRect(img, new CoordinateRect(0, image.Width, image.Height, 0));
        ir.AntiAlias = false;   // the pixels as they are (nearest), as the patches see them
        p.Axes.InvertY();
        p.Axes.SetLimits(0, image.Width, image.Height, 0);
        p.Axes.SquareUnits();
        p.Grid.IsVisible = false;
        return p;
    }

    static ImageU8 ToRgb(ImageU8 g)
    {
        var px = new byte[g.Height * g.Width * 3];
        for (int i = 0; i < g.Height * g.Width; i++)
            for (int c = 0; c < 3; c++) px[3 * i + c] = g.Pixels[i * g.Channels + Math.Min(c, g.Channels - 1)];
        return new ImageU8(g.Height, g.Width, 3, px);
    }

    /// <summary>
    /// Each patch's top-1 expert over the image, as GMoE's Figure 3: one panel with the image, then one per map (a
    /// sparse block), the patches coloured by expert (numbered when the grid is at most 16 x 16) with a legend.
    /// </summary>
    public static Figure ExpertMap(ImageU8 image, IReadOnlyList<(string Title, int[] Top1)> maps, PatchGrid grid, int numExperts, string title)
    {
        var panels = new List<Plot> { ImagePanel(image, "image") };
        double pw = (double)image.Width / grid.Cols, ph = (double)image.Height / grid.Rows;
        foreach (var (t, top1) in maps)
        {
            if (top1.Length != grid.Count) throw new ArgumentException($"expected {grid.Count} patch experts, got {top1.Length}");
            var p = ImagePanel(image, t);
            for (int i = 0; i < top1.Length; i++)
            {
                var (r, c) = grid.Of(i);
                var rect = p.Add.Rectangle(c * pw, (c + 1) * pw, r * ph, (r + 1) * ph);
                rect.FillColor = PlotStyle.ExpertColor(top1[i]).WithAlpha(150);
                rect.LineColor = Colors.White.WithAlpha(160);
                rect.LineWidth = 0.5f;
                if (grid.Rows <= 16 && grid.Cols <= 16)
                {
                    var txt = p.Add.Text(top1[i].ToString(CultureInfo.InvariantCulture), (c + 0.5) * pw, (r + 0.5) * ph);
                    txt.Alignment = Alignment.MiddleCenter;
                    txt.LabelFontSize = grid.Cols <= 8 ? 16 : 10;
                    txt.LabelBold = true;
                    txt.LabelFontColor = Colors.White;
                }
            }
            foreach (var e in Enumerable.Range(0, numExperts))
                p.Legend.ManualItems.Add(new LegendItem { LabelText = $"expert {e}", FillColor = PlotStyle.ExpertColor(e) });
            p.ShowLegend(Edge.Right);
            panels.Add(p);
        }
        return new Figure(panels, panels.Count, 470, 420, title);
    }

    /// <summary>
    /// The CLS token's attention over the patches per head, upsampled (nearest, as DINO) and overlaid on the image with a
    /// colour bar; with <paramref name="masks"/>, the outline of each head's thresholded patches.
    /// </summary>
    public static Figure AttentionGrid(ImageU8 image, IReadOnlyList<float[]> heads, PatchGrid grid, IReadOnlyList<bool[]>? masks, double? threshold,
        string title, int columns = 4)
    {
        var panels = new List<Plot> { ImagePanel(image, "image") };
        double pw = (double)image.Width / grid.Cols, ph = (double)image.Height / grid.Rows;
        for (int h = 0; h < heads.Count; h++)
        {
            var map = heads[h];
            if (map.Length != grid.Count) throw new ArgumentException($"expected {grid.Count} patch values, got {map.Length}");
            var p = ImagePanel(image, $"head {h}");
            var values = new double[grid.Rows, grid.Cols];
            for (int i = 0; i < map.Length; i++) values[i / grid.Cols, i % grid.Cols] = map[i];
            var hm = p.Add.Heatmap(values);
            hm.Colormap = new ScottPlot.Colormaps.Inferno();
            hm.Rectangle = new CoordinateRect(0, image.Width, image.Height, 0);
            hm.FlipVertically = true;   // the y axis points down
            hm.Opacity = 0.6;
            var cb = p.Add.ColorBar(hm);
            cb.Label = "attention";
            if (masks is not null)
            {
                var m = masks[h];
                var color = Colors.Cyan;
                bool K(int r, int c) => r >= 0 && r < grid.Rows && c >= 0 && c < grid.Cols && m[r * grid.Cols + c];
                ScottPlot.Plottables.LinePlot? any = null;
                for (int r = 0; r < grid.Rows; r++)
                    for (int c = 0; c < grid.Cols; c++)
                    {
                        if (!K(r, c)) continue;
                        double x0 = c * pw, x1 = (c + 1) * pw, y0 = r * ph, y1 = (r + 1) * ph;
                        var segs = new List<(double, double, double, double)>();
                        if (!K(r - 1, c)) segs.Add((x0, y0, x1, y0));
                        if (!K(r + 1, c)) segs.Add((x0, y1, x1, y1));
                        if (!K(r, c - 1)) segs.Add((x0, y0, x0, y1));
                        if (!K(r, c + 1)) segs.Add((x1, y0, x1, y1));
                        foreach (var (a, b, cc, d) in segs)
                        {
                            var l = p.Add.Line(a, b, cc, d);
                            l.Color = color; l.LineWidth = 2.5f; l.MarkerSize = 0;
                            any ??= l;
                        }
                    }
                if (any is not null)
                {
                    p.Legend.ManualItems.Add(new LegendItem { LabelText = $"{F(100 * (threshold ?? 0), "0")}% of the mass", LineColor = color, LineWidth = 2.5f });
                    p.ShowLegend(Alignment.LowerRight);
                }
            }
            panels.Add(p);
        }
        return new Figure(panels, panels.Count <= 5 ? panels.Count : Math.Min(columns, panels.Count), 420, 360, title);
    }

    static void Series(Plot p, double[] xs, double[] ys, string label, Color color, LinePattern? pattern = null, MarkerShape? marker = null)
    {
        var pts = xs.Zip(ys).Where(t => double.IsFinite(t.Second)).ToArray();
        if (pts.Length == 0) return;
        var s = p.Add.Scatter(pts.Select(t => t.First).ToArray(), pts.Select(t => t.Second).ToArray(), color);
        s.LegendText = label;
        s.LineWidth = 2;
        s.MarkerSize = pts.Length <= 40 ? 5 : 0;
        if (pattern is { } lp) s.LinePattern = lp;
        if (marker is { } ms) { s.MarkerShape = ms; s.MarkerSize = 7; }
    }

    /// <summary>
    /// A run's curves over steps: loss and aux loss; accuracy per environment (in-split solid, out-split dashed;
    /// held-out environments marked "test"); and per sparse block the expert load since the previous evaluation and
    /// the dropped-token fraction.
    /// </summary>
    public static Figure Curves(TrainingCurves c, IReadOnlyList<string>? envNames = null)
    {
        var panels = new List<Plot>();
        var loss = NewPlot("loss", "step", "loss");
        Series(loss, c.Steps, c.Loss, "loss (cross-entropy + aux)", PlotStyle.SeriesColor(0));
        loss.ShowLegend(Alignment.UpperRight);
        panels.Add(loss);
        var aux = NewPlot("aux (balance) loss", "step", "aux loss");
        Series(aux, c.Steps, c.AuxLoss, "aux loss", PlotStyle.SeriesColor(1));
        aux.ShowLegend(Alignment.UpperRight);
        panels.Add(aux);
        var acc = NewPlot("accuracy per environment", "step", "accuracy");
        foreach (var (e, i) in c.Environments.Select((e, i) => (e, i)))
        {
            string n = envNames is not null && e < envNames.Count ? envNames[e] : $"env{e}";
            if (c.TestEnvs.Contains(e)) n += " (test)";
            if (c.Accuracy.TryGetValue($"env{e}_in_acc", out var a)) Series(acc, c.Steps, a, n + " in", PlotStyle.SeriesColor(i));
            if (c.Accuracy.TryGetValue($"env{e}_out_acc", out var o)) Series(acc, c.Steps, o, n + " out", PlotStyle.SeriesColor(i), LinePattern.Dashed, MarkerShape.OpenSquare);
        }
        acc.Axes.SetLimitsY(0, 1);
        acc.ShowLegend(Edge.Right);
        panels.Add(acc);
        var dropped = NewPlot("dropped tokens per sparse block", "step", "fraction of tokens");
        foreach (var (b, i) in c.DroppedTokens.Keys.Select((b, i) => (b, i))) Series(dropped, c.Steps, c.DroppedTokens[b], b, PlotStyle.SeriesColor(i));
        dropped.ShowLegend(Alignment.UpperRight);
        if (c.DroppedTokens.Count > 0) panels.Add(dropped);
        foreach (var (b, loads) in c.ExpertLoad)
        {
            var p = NewPlot($"{b}: expert load", "step", "fraction of processed choices");
            int e = loads.Where(l => l is not null).Select(l => l!.Length).DefaultIfEmpty(0).Max();
            for (int x = 0; x < e; x++)
                Series(p, c.Steps, loads.Select(l => l is not null && x < l.Length ? l[x] : double.NaN).ToArray(), $"expert {x}", PlotStyle.ExpertColor(x));
            if (e > 0) p.Add.HorizontalLine(1.0 / e, 1, Colors.Gray, LinePattern.Dotted).LegendText = "uniform";
            p.ShowLegend(Edge.Right);
            panels.Add(p);
        }
        var label = string.Join(", ", new[] { c.Algorithm, c.Dataset }.Where(s => !string.IsNullOrEmpty(s)));
        return new Figure(panels, 2, 640, 400, $"training curves: {c.Name}" + (label.Length > 0 ? $" ({label})" : ""));
    }

    /// <summary>Runs side by side: loss, aux loss, held-out (test) accuracy and training-domain validation accuracy.</summary>
    public static Figure CompareRuns(IReadOnlyList<TrainingCurves> runs)
    {
        var specs = new (string Title, string Y, Func<TrainingCurves, double[]> Get)[]
        {
            ("loss", "loss", r => r.Loss),
            ("aux (balance) loss", "aux loss", r => r.AuxLoss),
            ("held-out environments: in-split accuracy", "accuracy", r => r.TestAccuracy),
            ("training environments: out-split (validation) accuracy", "accuracy", r => r.ValidationAccuracy),
        };
        var panels = specs.Select(s =>
        {
            var p = NewPlot(s.Title, "step", s.Y);
            for (int i = 0; i < runs.Count; i++) Series(p, runs[i].Steps, s.Get(runs[i]), runs[i].Name, PlotStyle.SeriesColor(i));
            p.ShowLegend(Edge.Right);
            return p;
        }).ToList();
        return new Figure(panels, 2, 720, 400, $"{runs.Count} runs compared");
    }

    /// <summary>Head redundancy per block, one series per model (lower: heads attend to different patches): the cosine
    /// similarity of the heads' maps and their Pearson correlation, side by side.</summary>
    public static Figure Redundancy(IReadOnlyList<ModelRedundancy> models)
    {
        var panels = new[]
        {
            ("cosine similarity of the heads' CLS attention maps", "mean pairwise cosine similarity", (Func<ModelRedundancy, double[]>)(m => m.PerBlock), 0.0),
            ("correlation of the heads' maps (each minus its mean)", "mean pairwise correlation", m => m.PatternPerBlock, -1.0),
        }.Select(spec =>
        {
            var (title, y, get, lo) = spec;
            var p = NewPlot(title, "block", y);
            int depth = 0;
            for (int i = 0; i < models.Count; i++)
            {
                var m = models[i];
                var v = get(m);
                depth = Math.Max(depth, v.Length);
                Series(p, Enumerable.Range(0, v.Length).Select(b => (double)b).ToArray(), v, m.Model, PlotStyle.SeriesColor(i));
                var sparse = Enumerable.Range(0, v.Length).Where(b => b < m.Kinds.Count && m.Kinds[b] == "S" && double.IsFinite(v[b])).ToArray();
                if (sparse.Length > 0)
                {
                    var mk = p.Add.Markers(sparse.Select(b => (double)b).ToArray(), sparse.Select(b => v[b]).ToArray(), MarkerShape.OpenSquare, 14, PlotStyle.SeriesColor(i));
                    mk.LegendText = $"{m.Model}: sparse blocks";
                }
            }
            p.Axes.Bottom.SetTicks(Enumerable.Range(0, depth).Select(b => (double)b).ToArray(), Enumerable.Range(0, depth).Select(b => b.ToString(CultureInfo.InvariantCulture)).ToArray());
            p.Axes.SetLimitsY(lo, 1.05);
            p.ShowLegend(Edge.Bottom);
            return p;
        }).ToArray();
        return new Figure(panels, 2, 640, 480, "head redundancy per block");
    }
}
