// Deploy an SfMoe model anywhere .NET runs: classify images with a model exported to ONNX
// (sfmoe export --format onnx ... or OnnxExporter.Export), through SfMoe.Onnx and ONNX Runtime only.
// Usage: dotnet SfMoe.Onnx.Sample.dll MODEL.onnx IMAGE [IMAGE...]
using SfMoe.Imaging;
using SfMoe.Onnx;

if (args.Length < 2)
{
    Console.Error.WriteLine("usage: SfMoe.Onnx.Sample MODEL.onnx IMAGE [IMAGE...]");
    return 2;
}
try
{
    using var model = OnnxModel.Load(args[0], new OnnxModelOptions { Threads = Environment.ProcessorCount });
    Console.WriteLine($"model: {model.Backbone}, {model.NumClasses} classes, {model.ImageSize}x{model.ImageSize} input"
                      + (model.Stochastic ? " (stochastic routing)" : ""));

    // One image at a time ...
    foreach (var p in model.Predict(args[1], top: 3))
        Console.WriteLine($"{Path.GetFileName(args[1])}: {p.Class} {p.Probability:P1}");

    // ... or a batch of files in one call.
    var images = args.Skip(1).ToList();
    var batch = model.PredictBatch(images, top: 1);
    for (int i = 0; i < images.Count; i++)
        Console.WriteLine($"batch {Path.GetFileName(images[i])}: {batch[i][0].Class} {batch[i][0].Probability:P1}");
    Console.WriteLine("onnx sample done");
    return 0;
}
catch (Exception e) when (e is OnnxModelException or ImageLoadException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
