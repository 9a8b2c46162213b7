using SfMoe.Imaging;
using SkiaSharp;

namespace SfMoe.Data;

/// <summary>Contact sheets: a grid of samples of a dataset, for looking at it.</summary>
public static class DatasetPreview
{
    /// <summary>
    /// A grid with one row per class (at most <paramref name="maxClasses"/>) and, for each environment in order, a block
    /// of <paramref name="perCell"/> columns holding that class's first samples in that environment, each scaled to
    /// <paramref name="cellSize"/> pixels. Blocks are separated by a wider gap. Images that fail to load stay grey.
    /// </summary>
    public static ImageU8 ContactSheet(IMultiDomainDataset dataset, int perCell = 3, int cellSize = 64, int maxClasses = 20)
    {
        const int gap = 2, blockGap = 10;
        var envs = dataset.Environments;
        int nClasses = Math.Min(maxClasses, Math.Max(1, dataset.Spec.Classes.Count));
        int width = envs.Count * (perCell * (cellSize + gap)) + (envs.Count - 1) * blockGap + gap;
        int height = nClasses * (cellSize + gap) + gap;
        var info = new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Premul);
        using var sheet = new SKBitmap(info);
        using (var canvas = new SKCanvas(sheet))
        {
            canvas.Clear(new SKColor(255, 255, 255));
            using var grey = new SKPaint { Color = new SKColor(128, 128, 128) };
            var sampling = new SKSamplingOptions(SKFilterMode.Linear);
            for (int e = 0; e < envs.Count; e++)
            {
                var env = envs[e];
                var picked = new List<int>[nClasses];
                for (int k = 0; k < nClasses; k++) picked[k] = [];
                for (int i = 0; i < env.Count; i++)
                {
                    int y = env.LabelOf(i);
                    if (y < nClasses && picked[y].Count < perCell) picked[y].Add(i);
                }
                for (int k = 0; k < nClasses; k++)
                {
                    for (int j = 0; j < perCell; j++)
                    {
                        float x0 = gap + e * (perCell * (cellSize + gap) + blockGap) + j * (cellSize + gap);
                        float y0 = gap + k * (cellSize + gap);
                        var dest = new SKRect(x0, y0, x0 + cellSize, y0 + cellSize);
                        if (j >= picked[k].Count) { canvas.DrawRect(dest, grey); continue; }
                        try
                        {
                            using var bmp = SkiaImages.ToBitmap(env.Load(picked[k][j]));
                            using var img = SKImage.FromBitmap(bmp);
                            canvas.DrawImage(img, dest, sampling);
                        }
                        catch (ImageLoadException) { canvas.DrawRect(dest, grey); }
                    }
                }
            }
        }
        return SkiaImages.FromRgbaBitmap(sheet);
    }
}
