using System.Globalization;

namespace SfMoe.Imaging;

/// <summary>
/// The rotation DomainBed's RotatedMNIST applies: <c>torchvision.transforms.functional.rotate(pil_image, angle,
/// fill=(0,), interpolation=BILINEAR)</c> on an 8-bit grayscale ('L') PIL image, which is Pillow's
/// <c>Image.rotate(angle, BILINEAR, expand=False, center=None, fillcolor=0)</c>, reproduced step by step:
/// <list type="bullet">
/// <item>angle mod 360; 0 is a copy, 180 (and 90/270 for square images) are exact transposes;</item>
/// <item>otherwise the inverse affine map about the centre (w/2, h/2) with cos/sin of -angle rounded to 15 decimals,
/// evaluated at pixel centres (x + 0.5, y + 0.5) in double precision;</item>
/// <item>a source point outside [0, w) x [0, h) gives the fill 0; inside, bilinear interpolation of the four
/// neighbours of (u - 0.5, v - 0.5) with edge clamping, truncated to a byte.</item>
/// </list>
/// Counter-clockwise for positive angles, as PIL.
/// </summary>
internal static class PilRotate
{
    /// <summary>Rotates a row-major 8-bit single-channel image by <paramref name="angleDegrees"/> (counter-clockwise).</summary>
    public static byte[] RotateBilinear(ReadOnlySpan<byte> src, int height, int width, double angleDegrees)
    {
        if (src.Length != height * width) throw new ArgumentException($"expected {height * width} bytes, got {src.Length}");
        double angle = PyMod(angleDegrees, 360.0);
        var dst = new byte[height * width];
        if (angle == 0) { src.CopyTo(dst); return dst; }
        if (angle == 180)
        {
            for (int y = 0; y < height; y++)
                for (int x = 0; x < width; x++)
                    dst[y * width + x] = src[(height - 1 - y) * width + (width - 1 - x)];
            return dst;
        }
        if ((angle == 90 || angle == 270) && width == height)
        {
            int n = width;
            for (int y = 0; y < n; y++)
                for (int x = 0; x < n; x++)
                    // ROTATE_90 (counter-clockwise): out(x, y) = in(n-1-y, x); ROTATE_270: out(x, y) = in(y, n-1-x)
                    dst[y * n + x] = angle == 90 ? src[x * n + (n - 1 - y)] : src[(n - 1 - x) * n + y];
            return dst;
        }

        double rad = -(angle * Math.PI / 180.0);   // math.radians(a) = a * pi / 180
        double c = Round15(Math.Cos(rad)), s = Round15(Math.Sin(rad)), ms = Round15(-Math.Sin(rad));
        double cx = width / 2.0, cy = height / 2.0;
        double a0 = c, a1 = s, a3 = ms, a4 = c;
        double a2 = a0 * (-cx - 0.0) + a1 * (-cy - 0.0) + 0.0;
        double a5 = a3 * (-cx - 0.0) + a4 * (-cy - 0.0) + 0.0;
        a2 += cx;
        a5 += cy;

        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < width; x++)
            {
                double xin = x + 0.5, yin = y + 0.5;
                double u = a0 * xin + a1 * yin + a2;
                double v = a3 * xin + a4 * yin + a5;
                if (u < 0.0 || u >= width || v < 0.0 || v >= height) continue;   // fill 0
                u -= 0.5;
                v -= 0.5;
                int xi = (int)Math.Floor(u), yi = (int)Math.Floor(v);
                double dx = u - xi, dy = v - yi;
                int x0 = Math.Clamp(xi, 0, width - 1), x1 = Math.Clamp(xi + 1, 0, width - 1);
                int row = Math.Clamp(yi, 0, height - 1) * width;
                double v1 = Lerp(src[row + x0], src[row + x1], dx);
                double v2;
                if (yi + 1 >= 0 && yi + 1 < height)
                {
                    int row1 = (yi + 1) * width;
                    v2 = Lerp(src[row1 + x0], src[row1 + x1], dx);
                }
                else v2 = v1;
                v1 = v1 + (v2 - v1) * dy;
                dst[y * width + x] = (byte)v1;
            }
        }
        return dst;
    }

    static double Lerp(double a, double b, double d) => a + (b - a) * d;

    /// <summary>Python's float % (the result takes the divisor's sign).</summary>
    static double PyMod(double a, double m)
    {
        double r = a % m;
        if (r != 0 && (r < 0) != (m < 0)) r += m;
        return r;
    }

    /// <summary>Python's round(x, 15): the double nearest to x rounded to 15 decimals.</summary>
    static double Round15(double x) =>
        double.Parse(x.ToString("F15", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
}
