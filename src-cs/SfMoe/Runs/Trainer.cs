using Microsoft.Extensions.Logging;
using SfMoe.Core;
using SfMoe.Data;

namespace SfMoe.Runs;

/// <summary>
/// DomainBed's train.py for SfMoe: splits every environment into in/out, trains on the in-splits of the training
/// environments (one minibatch from each per step), evaluates every environment's in and out split at step 0, every
/// checkpoint_freq steps and at the last step, and appends one line per evaluation to results.jsonl. A checkpoint
/// (model file + training state) is written at every evaluation, so a killed run resumes exactly. One run per
/// output folder: the folder is locked for the run's duration.
/// </summary>
public static class Trainer
{
    /// <summary>Runs (or resumes) a training run, calling <paramref name="onProgress"/> after every step, in order,
    /// on the training thread.</summary>
    public static TrainResult Run(TrainOptions o, Action<TrainProgress> onProgress, CancellationToken ct = default) =>
        Run(o, new CallbackProgress(onProgress), ct);

    sealed class CallbackProgress(Action<TrainProgress> f) : IProgress<TrainProgress>
    {
        public void Report(TrainProgress value) => f(value);
    }

    /// <summary>Runs (or resumes) a training run.</summary>
    /// <exception cref="ConfigException">An option is invalid; the message names it (TrainOptions.X).</exception>
    /// <exception cref="RunException">The output folder holds another run, is locked by another process, or has
    /// nothing to resume; the loss became non-finite.</exception>
    /// <exception cref="DatasetException">The dataset cannot be read.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="ct"/> was cancelled (the last checkpoint
    /// stays: resume continues from it).</exception>
    public static TrainResult Run(TrainOptions o, IProgress<TrainProgress>? progress = null, CancellationToken ct = default)
    {
        Native.ensure();
        using var folder = RunFolder.Open(o.OutputDir, o.Resume);
        if (o.Threads is int th)
        {
            if (th < 1) throw new ConfigException($"TrainOptions.Threads must be >= 1, got {th}");
            TorchSharp.torch.set_num_threads(th);
        }
        using var log = new RunLog(folder.Log, o.Logger);
        using var run = TrainingRun.Prepare(o, folder, log);
        return run.Execute(progress, ct);
    }

    /// <summary>The device of a device name ("cpu", "cuda", "cuda:N").</summary>
    internal static TorchSharp.torch.Device Device(string device) => Tensors.DdModule.ofString(device).Device;
}
