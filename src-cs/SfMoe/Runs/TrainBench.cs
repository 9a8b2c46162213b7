using System.Diagnostics;
using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using SfMoe.Checkpoints;
using SfMoe.Core;
using SfMoe.Data;
using SfMoe.Imaging;
using static TorchSharp.torch;

namespace SfMoe.Runs;

/// <summary>Images per second of the data pipeline alone, of training alone and of the two together, measured in one
/// run (the machines are shared: compare the ratios).</summary>
internal sealed record TrainBenchResult(
    string Model, string Dataset, string Device, string Precision, int BatchSize, int Environments, int Steps, int Threads, int Workers,
    double PipelineImagesPerSecond, double TrainingImagesPerSecond, double TogetherImagesPerSecond,
    double TogetherOverTraining, double PeakMemoryGb);

/// <summary>`sfmoe bench train`.</summary>
internal static class TrainBench
{
    /// <summary>Measures on the training environments of a dataset (all but env 0) with its default preprocessing, training
    /// on <paramref name="device"/> in <paramref name="precision"/>. The device is synchronised before every clock read.</summary>
    public static TrainBenchResult Run(IMultiDomainDataset dataset, string model, int batchSize, int steps, int? threads = null,
                                       int? workers = null, string algorithm = "SFMoE", long cacheBytes = 2L << 30,
                                       string device = "cpu", Precision precision = Precision.Fp32)
    {
        Native.ensure();
        var dd = Tensors.DdModule.ofString(device);
        var dev = dd.Device;
        void Sync() => Tensors.synchronize(dev);
        var spec = dataset.Spec;
        var alg = Train.AlgorithmKindModule.tryParse(algorithm)?.Value ?? throw new RunException($"unknown algorithm {algorithm}");
        var data = new ModelSpec.DataShape(spec.Classes.Count, spec.Channels, spec.Height);
        var arch = ModelSpec.resolve(ModelSpec.Create(ModelSpec.Source.NewNamed(model), null, null, null, FSharpOption<ModelSpec.DataShape>.Some(data)));
        var pre = Preprocessors.For(spec, Config.ArchitectureModule.imgSize(arch));
        int cores = Environment.ProcessorCount;
        int trainEnvs = Math.Max(1, dataset.Environments.Count - 1);
        set_num_threads(threads ?? ThreadPlan.Threads(ThreadPlan.StepMacs(Summary.macsPerImage(arch), batchSize * trainEnvs), cores,
                                                      workers ?? ThreadPlan.Workers(cores)));
        var net = Networks.build(arch, dd, 0, 0.0);
        using var learner = new Train.Learner(net, alg, Optim.Kind.AdamL2, 1e-5, 0.0, 0, dd, Precisions.ToCore(precision), false);
        using var log = new RunLog(null, null);
        var envs = dataset.Environments.Skip(1).Select(e => (e, Enumerable.Range(0, e.Count).ToArray())).ToList();
        int w = workers ?? ThreadPlan.Workers(cores);
        int images = batchSize * envs.Count;

        // Pipeline alone (prefetching stream, nothing consuming but the timer). The first pass fills the decode cache.
        double PipelineRate(SafeLoader loader)
        {
            using var s = new TrainStream(envs, batchSize, pre, 1, 0, w, loader, dev);
            s.Next().Dispose();
            Sync();
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < steps; i++) s.Next().Dispose();
            Sync();
            return images * steps / sw.Elapsed.TotalSeconds;
        }
        var shared = new SafeLoader(log, cacheBytes);
        // warm the cache over every training image once, as a run does in its first epoch
        Parallel.ForEach(envs, ew => { foreach (var i in ew.Item2) shared.TryLoad(ew.e, i); });
        double pipeline = PipelineRate(shared);

        // Training alone: the same prepared batch again and again.
        double training;
        using (var s = new TrainStream(envs, batchSize, pre, 2, 0, w, shared, dev))
        using (var b = s.Next())
        {
            learner.Update(ListModule.OfArray(b.Xs), ListModule.OfArray(b.Ys));
            Sync();
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < steps; i++) learner.Update(ListModule.OfArray(b.Xs), ListModule.OfArray(b.Ys));
            Sync();
            training = images * steps / sw.Elapsed.TotalSeconds;
        }

        // Together: the real loop.
        double together;
        using (var s = new TrainStream(envs, batchSize, pre, 3, 0, w, shared, dev))
        {
            using (var b = s.Next()) learner.Update(ListModule.OfArray(b.Xs), ListModule.OfArray(b.Ys));
            Sync();
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < steps; i++)
                using (var b = s.Next()) learner.Update(ListModule.OfArray(b.Xs), ListModule.OfArray(b.Ys));
            Sync();
            together = images * steps / sw.Elapsed.TotalSeconds;
        }
        net.Module.Dispose();
        return new TrainBenchResult(model, spec.Name, device, Precisions.Name(precision), batchSize, envs.Count, steps, get_num_threads(), w, pipeline, training, together,
                                    together / training, Process.GetCurrentProcess().PeakWorkingSet64 / (double)(1L << 30));
    }

    /// <summary>Writes the Synthetic dataset as a DomainBed folder of JPEG files of <paramref name="size"/> pixels
    /// (a stand-in for PACS-like photo folders when none is at hand).</summary>
    public static string WriteJpegFolder(string root, int size, int perEnv)
    {
        var ds = new SyntheticDataset(new SyntheticOptions { Size = size, ImagesPerEnvironment = perEnv });
        foreach (var env in ds.Environments)
            for (int i = 0; i < env.Count; i++)
            {
                var dir = Path.Combine(root, env.Name, ds.Spec.Classes[env.LabelOf(i)]);
                Directory.CreateDirectory(dir);
                File.WriteAllBytes(Path.Combine(dir, $"{i:D5}.jpg"), ImageCodec.EncodeJpeg(env.Load(i), 90));
            }
        return root;
    }
}
