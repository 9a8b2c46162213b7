using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace SfMoe.Imaging;

/// <summary>
/// Pillow 9.4's Resample.c for 8 bits per channel with the bilinear (triangle) filter, bit for bit: separable passes, a
/// horizontal one (only when the width changes) over just the rows the vertical pass needs, rounded and clipped to uint8,
/// then a vertical one (only when the height changes). Downscaling widens the filter's support by the reduction factor
/// (antialiasing); weights are normalised in double precision and rounded to 22-bit fixed point, and each sum starts at
/// 0.5 in fixed point before the shift. Channels are resampled independently (PIL's L and RGB).
/// </summary>
internal static class PilResample
{
    /// <summary>PIL's <c>img.resize((width, height), Image.BILINEAR)</c>.</summary>
    internal static ImageU8 Resize(ImageU8 img, int height, int width) => ResizeRegion(img, 0, 0, img.Height, img.Width, height, width);

    const int PrecisionBits = 32 - 8 - 2;

    /// <summary>Fixed-point weights of one pass: output i reads <c>Count[i]</c> inputs from <c>Start[i]</c> with weights <c>Weights[i*KSize ..]</c>.</summary>
    sealed class Coefficients(int[] start, int[] count, int[] weights, int kSize)
    {
        public readonly int[] Start = start, Count = count, Weights = weights;
        public readonly int KSize = kSize;
    }

    static Coefficients Precompute(int inSize, int outSize)
    {
        // precompute_coeffs with in0 = 0, in1 = inSize (the box of a whole image, or of a crop: PIL crops first).
        double scale = (double)inSize / outSize;
        double filterScale = scale < 1.0 ? 1.0 : scale;
        double support = 1.0 * filterScale;                  // the bilinear (triangle) filter has support 1
        int kSize = (int)Math.Ceiling(support) * 2 + 1;
        var start = new int[outSize];
        var count = new int[outSize];
        var weights = new int[outSize * kSize];
        Span<double> k = stackalloc double[kSize];
        double ss = 1.0 / filterScale;
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = (xx + 0.5) * scale;
            double ww = 0.0;
            int xmin = (int)(center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            for (int x = 0; x < xmax; x++)
            {
                double w = Triangle((x + xmin - center + 0.5) * ss);
                k[x] = w;
                ww += w;
            }
            for (int x = 0; x < xmax; x++)
            {
                double kx = ww != 0.0 ? k[x] / ww : k[x];
                weights[xx * kSize + x] = kx < 0
                    ? (int)(-0.5 + kx * (1 << PrecisionBits))
                    : (int)(0.5 + kx * (1 << PrecisionBits));
            }
            start[xx] = xmin;
            count[xx] = xmax;
        }
        return new Coefficients(start, count, weights, kSize);
    }

    static double Triangle(double x)
    {
        if (x < 0.0) x = -x;
        return x < 1.0 ? 1.0 - x : 0.0;
    }

    static byte ClipFixed(int ss)
    {
        int v = ss >> PrecisionBits;
        return v <= 0 ? (byte)0 : v >= 255 ? (byte)255 : (byte)v;
    }

    /// <summary>
    /// Crops rows <paramref name="top"/>.. and columns <paramref name="left"/>.. (<paramref name="boxH"/> x <paramref name="boxW"/>,
    /// inside the image: the caller checks) and resizes the crop (PIL's ImagingResampleInner on the cropped image).
    /// </summary>
    internal static ImageU8 ResizeRegion(ImageU8 img, int top, int left, int boxH, int boxW, int outH, int outW)
    {
        if (outH <= 0 || outW <= 0) throw new ArgumentException($"output size must be positive, got {outH}x{outW}");
        int c = img.Channels;
        bool needH = outW != boxW, needV = outH != boxH;
        if (!needH && !needV) return PilGeometry.Crop(img, top, left, boxH, boxW);
        var vert = needV ? Precompute(boxH, outH) : null;

        // Source of the vertical pass: the horizontally resampled rows, or the crop itself.
        byte[] src = img.Pixels;
        int srcStride = img.Width * c, srcRow0 = top, srcCol0 = left * c;
        if (needH)
        {
            int y0 = 0, y1 = boxH;
            if (vert != null) { y0 = vert.Start[0]; y1 = vert.Start[outH - 1] + vert.Count[outH - 1]; }
            var horiz = Precompute(boxW, outW);
            var tmp = new byte[(y1 - y0) * outW * c];
            HorizontalPass(img, top + y0, left, y1 - y0, horiz, outW, tmp);
            if (vert == null) return new ImageU8(outH, outW, c, tmp);
            src = tmp; srcStride = outW * c; srcRow0 = -y0; srcCol0 = 0;
        }
        var dst = new byte[outH * outW * c];
        VerticalPass(src, srcStride, srcRow0, srcCol0, vert!, outH, outW * c, dst);
        return new ImageU8(outH, outW, c, dst);
    }

    static void HorizontalPass(ImageU8 img, int row0, int col0, int rows, Coefficients k, int outW, byte[] dst)
    {
        int c = img.Channels, stride = img.Width * c, kSize = k.KSize;
        ref byte src = ref MemoryMarshal.GetArrayDataReference(img.Pixels);
        ref byte o = ref MemoryMarshal.GetArrayDataReference(dst);
        ref int weights = ref MemoryMarshal.GetArrayDataReference(k.Weights);
        int[] starts = k.Start, counts = k.Count;
        const int half = 1 << (PrecisionBits - 1);
        for (int y = 0; y < rows; y++)
        {
            int srow = (row0 + y) * stride + col0 * c;
            int drow = y * outW * c;
            for (int xx = 0; xx < outW; xx++)
            {
                int n = counts[xx], s = srow + starts[xx] * c, d = drow + xx * c;
                ref int w = ref Unsafe.Add(ref weights, xx * kSize);
                if (c == 3)
                {
                    int s0 = half, s1 = half, s2 = half;
                    ref byte p = ref Unsafe.Add(ref src, s);
                    for (int t = 0; t < n; t++)
                    {
                        int wt = Unsafe.Add(ref w, t);
                        ref byte q = ref Unsafe.Add(ref p, 3 * t);
                        s0 += q * wt;
                        s1 += Unsafe.Add(ref q, 1) * wt;
                        s2 += Unsafe.Add(ref q, 2) * wt;
                    }
                    Unsafe.Add(ref o, d) = ClipFixed(s0);
                    Unsafe.Add(ref o, d + 1) = ClipFixed(s1);
                    Unsafe.Add(ref o, d + 2) = ClipFixed(s2);
                }
                else
                {
                    for (int ch = 0; ch < c; ch++)
                    {
                        int acc = half;
                        for (int t = 0; t < n; t++) acc += Unsafe.Add(ref src, s + t * c + ch) * Unsafe.Add(ref w, t);
                        Unsafe.Add(ref o, d + ch) = ClipFixed(acc);
                    }
                }
            }
        }
    }

    static void VerticalPass(byte[] src, int stride, int row0, int col0, Coefficients k, int outH, int rowLen, byte[] dst)
    {
        const int half = 1 << (PrecisionBits - 1);
        var acc = new int[rowLen];
        int lanes = Vector<int>.Count, block = Vector<byte>.Count;   // one byte vector widens to 4 int vectors
        for (int yy = 0; yy < outH; yy++)
        {
            Array.Fill(acc, half);
            int wk = yy * k.KSize, n = k.Count[yy], first = k.Start[yy];
            for (int t = 0; t < n; t++)
            {
                int w = k.Weights[wk + t];
                var row = src.AsSpan((row0 + first + t) * stride + col0, rowLen);
                var wv = new Vector<int>(w);
                int j = 0;
                if (Vector.IsHardwareAccelerated)
                {
                    var accI = MemoryMarshal.Cast<int, Vector<int>>(acc.AsSpan());
                    for (; j + block <= rowLen; j += block)
                    {
                        var b = new Vector<byte>(row.Slice(j, block));
                        Vector.Widen(b, out Vector<ushort> lo, out Vector<ushort> hi);
                        Vector.Widen(lo, out Vector<uint> a0, out Vector<uint> a1);
                        Vector.Widen(hi, out Vector<uint> a2, out Vector<uint> a3);
                        int v = j / lanes;
                        accI[v] += Vector.AsVectorInt32(a0) * wv;
                        accI[v + 1] += Vector.AsVectorInt32(a1) * wv;
                        accI[v + 2] += Vector.AsVectorInt32(a2) * wv;
                        accI[v + 3] += Vector.AsVectorInt32(a3) * wv;
                    }
                }
                for (; j < rowLen; j++) acc[j] += row[j] * w;
            }
            var o = dst.AsSpan(yy * rowLen, rowLen);
            int m = 0;
            if (Vector.IsHardwareAccelerated)
            {
                var accI = MemoryMarshal.Cast<int, Vector<int>>(acc.AsSpan());
                var max = new Vector<int>(255);
                for (; m + block <= rowLen; m += block)
                {
                    int v = m / lanes;
                    var c0 = Vector.AsVectorUInt32(Vector.Min(Vector.Max(Vector.ShiftRightArithmetic(accI[v], PrecisionBits), Vector<int>.Zero), max));
                    var c1 = Vector.AsVectorUInt32(Vector.Min(Vector.Max(Vector.ShiftRightArithmetic(accI[v + 1], PrecisionBits), Vector<int>.Zero), max));
                    var c2 = Vector.AsVectorUInt32(Vector.Min(Vector.Max(Vector.ShiftRightArithmetic(accI[v + 2], PrecisionBits), Vector<int>.Zero), max));
                    var c3 = Vector.AsVectorUInt32(Vector.Min(Vector.Max(Vector.ShiftRightArithmetic(accI[v + 3], PrecisionBits), Vector<int>.Zero), max));
                    Vector.Narrow(Vector.Narrow(c0, c1), Vector.Narrow(c2, c3)).CopyTo(o.Slice(m, block));
                }
            }
            for (; m < o.Length; m++) o[m] = ClipFixed(acc[m]);
        }
    }
}
