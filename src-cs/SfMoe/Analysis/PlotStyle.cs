using ScottPlot;
using SkiaSharp;

namespace SfMoe.Analysis;

/// <summary>
/// Shared look of every SfMoe plot: the bundled DejaVu Sans (so text renders on machines without system fonts), the
/// expert colours and the default figure sizes. Every plot factory in <see cref="Plots"/> calls <see cref="Ensure"/>
/// first; call it yourself before building ScottPlot figures of your own that should look the same.
/// </summary>
public static class PlotStyle
{
    /// <summary>The font family name the bundled font is registered under.</summary>
    public const string FontName = "SfMoe Sans";

    static readonly object Gate = new();
    static bool _ready;

    /// <summary>Registers the bundled font with ScottPlot and makes it the default (idempotent, thread-safe).</summary>
    public static void Ensure()
    {
        lock (Gate)
        {
            if (_ready) return;
            Fonts.FontResolvers.Insert(0, new BundledFontResolver());
            Fonts.Default = FontName;
            _ready = true;
        }
    }

    /// <summary>Colour of expert <paramref name="e"/> (Tableau 10, then repeating with another shade).</summary>
    public static Color ExpertColor(int e)
    {
        var p = new ScottPlot.Palettes.Category10();
        var c = p.GetColor(e % 10);
        return e < 10 ? c : c.Darken(0.4);
    }

    /// <summary>Colour of series <paramref name="i"/> of a line plot.</summary>
    public static Color SeriesColor(int i) => new ScottPlot.Palettes.Category10().GetColor(i % 10);

    sealed class BundledFontResolver : IFontResolver
    {
        // The bytes are kept; each call makes a new typeface, since ScottPlot caches (and may dispose) what it gets.
        readonly Lazy<byte[]> _regular = new(() => Load("SfMoe.Analysis.DejaVuSans.ttf"));
        readonly Lazy<byte[]> _bold = new(() => Load("SfMoe.Analysis.DejaVuSans-Bold.ttf"));

        static byte[] Load(string resource)
        {
            using var s = typeof(PlotStyle).Assembly.GetManifestResourceStream(resource)
                ?? throw new InvalidOperationException($"embedded font {resource} is missing");
            using var ms = new MemoryStream();
            s.CopyTo(ms);
            return ms.ToArray();
        }

        static SKTypeface Make(byte[] bytes)
        {
            using var data = SKData.CreateCopy(bytes);
            return SKTypeface.FromData(data) ?? throw new InvalidOperationException("the embedded font cannot be read");
        }

        static bool Matches(string name) =>
            string.Equals(name, FontName, StringComparison.OrdinalIgnoreCase) ||
            string.Equals(name, "DejaVu Sans", StringComparison.OrdinalIgnoreCase);

        public SKTypeface? CreateTypeface(string fontName, FontWeight weight, FontSlant slant, FontSpacing spacing) =>
            Matches(fontName) ? Make(weight >= FontWeight.SemiBold ? _bold.Value : _regular.Value) : null;

        public SKTypeface? CreateTypeface(string fontName, bool bold, bool italic) =>
            Matches(fontName) ? Make(bold ? _bold.Value : _regular.Value) : null;
    }
}
