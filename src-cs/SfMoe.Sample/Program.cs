// A C# application that uses only SfMoe's public API: train a small SF-MoE on the built-in Synthetic dataset
// (leaving the "cartoon" domain out), look at its routing, evaluate it and predict an image.
// Usage: dotnet run --project src-cs/SfMoe.Sample -- [output-dir] [steps]
using SfMoe;
using SfMoe.Data;
using SfMoe.Runs;
using TorchSharp;

var outDir = args.Length > 0 ? args[0] : Path.Combine(Path.GetTempPath(), "sfmoe-sample");
var steps = args.Length > 1 ? int.Parse(args[1]) : 60;
if (Directory.Exists(outDir)) Directory.Delete(outDir, recursive: true);

// 1. Train (one call; progress through a callback).
var options = new TrainOptions
{
    Dataset = "Synthetic",
    TestEnvs = new[] { 0 },
    Algorithm = Algorithm.SFMoE,
    Model = "sfmoe_test_patch8_32",
    Steps = steps,
    CheckpointFreq = Math.Max(1, steps / 2),
    SyntheticSize = 200,
    OutputDir = outDir,
};
var result = Trainer.Run(options, p =>
{
    if (p.Evaluation is { } ev) Console.WriteLine($"step {ev.Step}: loss {ev.Loss:F3}, held-out accuracy {ev.Accuracies["env0_in"]:F3}");
});
Console.WriteLine($"trained {steps} steps; model at {result.ModelPath}");

// 2. Load the model file and evaluate it on every environment.
using var model = TrainedModel.Load(result.ModelPath);
var dataset = Datasets.Open("Synthetic", null, null, new DatasetOptions { Synthetic = new SyntheticOptions { ImagesPerEnvironment = 200 } });
var eval = model.Evaluate(dataset);
foreach (var (name, acc) in eval.Accuracies) Console.WriteLine($"{name}: {acc:F3}");

// 3. Predict one image.
var image = dataset.Environments[0].Load(3);
var top = model.Predict(image, top: 3);
Console.WriteLine($"image of a {dataset.Spec.Classes[dataset.Environments[0].LabelOf(3)]}: " +
                  string.Join(", ", top.Select(p => $"{p.Class} {p.Probability:P1}")));

// 4. The routing of the sparse blocks, through the model API.
using var sfmoe = SfMoeModel.Create("sfmoe_test_patch8_32", new ModelOptions { NumClasses = 7, Seed = 0 });
using var x = torch.randn(2, 3, 32, 32);
using var output = sfmoe.Run(x, returnRouting: true);
foreach (var r in output.Routing)
    Console.WriteLine($"block {r.Block}: experts load {string.Join("/", r.Load.cpu().data<long>().ToArray())}, capacity {r.Capacity}");
Console.WriteLine("sample done");

