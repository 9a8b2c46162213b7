using Microsoft.Extensions.Logging;
using SfMoe.Data;

namespace SfMoe.Runs;

/// <summary>The training algorithms (DomainBed's names).</summary>
public enum Algorithm
{
    /// <summary>Empirical risk minimisation: cross-entropy only.</summary>
    ERM,
    /// <summary>SF-MoE: cross-entropy plus the sparse blocks' balance losses.</summary>
    SFMoE,
    /// <summary>GMoE: the same objective with GMoE's hyperparameter defaults.</summary>
    GMoE,
}

/// <summary>The optimizers.</summary>
public enum Optimizer
{
    /// <summary>torch.optim.Adam: weight decay added to the gradient (L2), as the authors.</summary>
    Adam,
    /// <summary>AdamW: decoupled weight decay.</summary>
    AdamW,
}

/// <summary>How the experts of blocks that are sparse in the model but dense in a pretrained checkpoint start.</summary>
public enum ExpertInit
{
    /// <summary>The dense FFN copied into every expert (GMoE).</summary>
    Copy,
    /// <summary>The experts keep their random init (SF-MoE as released).</summary>
    Random,
}

/// <summary>Everything a training run takes. Unset values take the dataset's and the hyperparameter registry's
/// defaults.</summary>
public sealed class TrainOptions
{
    /// <summary>DomainBed dataset name, a folder in DomainBed's layout, or null for the built-in Synthetic dataset.</summary>
    public string? Dataset { get; set; }
    /// <summary>Folder holding the datasets.</summary>
    public string? DataDir { get; set; }
    /// <summary>A dataset object instead of a name (tests, custom data in code).</summary>
    public IMultiDomainDataset? DatasetInstance { get; set; }
    /// <summary>Held-out environments (indices); DomainBed runs one, leave-one-domain-out selection also needs pairs.</summary>
    public IReadOnlyList<int> TestEnvs { get; set; } = new[] { 0 };
    /// <summary>The training algorithm.</summary>
    public Algorithm Algorithm { get; set; } = Algorithm.SFMoE;
    /// <summary>Registry model (ViT), or resnet50 / mnist_cnn; null picks the algorithm's and dataset's default.</summary>
    public string? Model { get; set; }
    /// <summary>A model config JSON text (instead of <see cref="Model"/>).</summary>
    public string? ModelConfigJson { get; set; }
    /// <summary>Block pattern overriding the model's.</summary>
    public string? Pattern { get; set; }
    /// <summary>Training steps (default: the dataset's).</summary>
    public int? Steps { get; set; }
    /// <summary>Evaluate every K steps (default: the dataset's).</summary>
    public int? CheckpointFreq { get; set; }
    /// <summary>Batch size per training environment (default: hyperparameter registry).</summary>
    public int? BatchSize { get; set; }
    /// <summary>Learning rate (default: registry).</summary>
    public double? Lr { get; set; }
    /// <summary>Weight decay (default: registry).</summary>
    public double? WeightDecay { get; set; }
    /// <summary>Adam (L2 weight decay, as the authors) or AdamW.</summary>
    public Optimizer Optimizer { get; set; } = Optimizer.Adam;
    /// <summary>Seed of the model init, data order, augmentation and every random choice in training.</summary>
    public int Seed { get; set; }
    /// <summary>Seed of the in/out splits (DomainBed trial seed).</summary>
    public int TrialSeed { get; set; }
    /// <summary>Seed of the random hyperparameters (0: defaults).</summary>
    public int HparamsSeed { get; set; }
    /// <summary>CPU threads for tensor operations (default: planned from the model's work per step).</summary>
    public int? Threads { get; set; }
    /// <summary>Threads decoding and augmenting images (default: 1 on small machines, else cores / 2).</summary>
    public int? Workers { get; set; }
    /// <summary>cpu, cuda or cuda:N.</summary>
    public string Device { get; set; } = "cpu";
    /// <summary>Numeric precision (recorded in results.jsonl's args). Null: <see cref="SfMoe.Precision.Fp32"/> for a new
    /// run, the run's own precision on <see cref="Resume"/> (a resume with another precision is refused).</summary>
    public Precision? Precision { get; set; }
    /// <summary>libtorch's deterministic algorithms for the run (process-wide while it runs; on CUDA deterministic
    /// kernels instead of atomics, slower; see README "GPUs"). The kernels SfMoe uses on a CPU are deterministic already:
    /// there no result changes. Recorded in results.jsonl's args; a resume may change it.</summary>
    public bool Deterministic { get; set; }
    /// <summary>Run folder: results.jsonl, model.safetensors, train_state.safetensors, log.txt, done.</summary>
    public string OutputDir { get; set; } = "runs/train";
    /// <summary>Continue the run in <see cref="OutputDir"/> from its last checkpoint.</summary>
    public bool Resume { get; set; }
    /// <summary>Fraction of every environment held out as its out split.</summary>
    public double HoldoutFraction { get; set; } = 0.2;
    /// <summary>Memory for the evaluation image cache (decoded and resized once per run).</summary>
    public long EvalCacheBytes { get; set; } = 2L << 30;
    /// <summary>Memory for decoded training images (decoded once, augmented at every use).</summary>
    public long TrainCacheBytes { get; set; } = 2L << 30;
    /// <summary>Record step_time and mem_gb (measurements); false writes 0 so that results.jsonl is reproducible.</summary>
    public bool RecordTimings { get; set; } = true;
    /// <summary>Images rendered per environment by the Synthetic dataset.</summary>
    public int? SyntheticSize { get; set; }
    /// <summary>Where progress lines and warnings go, besides the run's log.txt (null: nowhere).</summary>
    public ILogger? Logger { get; set; }
    /// <summary>Initial weights: a checkpoint in one of <see cref="Checkpoints.Pretrained.Formats"/> (deit, timm, augreg,
    /// sfmoe-dg, gmoe, torchvision).</summary>
    public string? Pretrained { get; set; }
    /// <summary>Format of <see cref="Pretrained"/>.</summary>
    public string? PretrainedFormat { get; set; }
    /// <summary>How sparse blocks start from a dense checkpoint; null: the model's default (Random for SF-MoE's linear
    /// router, Copy for GMoE's cosine router).</summary>
    public ExpertInit? Experts { get; set; }
    /// <summary>Image preprocessing (null: the dataset's default: DomainBed's transforms, or /255 for MNIST).</summary>
    public IPreprocessor? Preprocessor { get; set; }
    /// <summary>Stop after this many steps of this invocation (tests of resume: a "kill" at a known point).</summary>
    internal int? StopAfterSteps { get; set; }
}

/// <summary>Accuracies and averaged training metrics of one evaluation.</summary>
public sealed record EvalResult(int Step, double Epoch, double Loss, double AuxLoss, double StepTime, IReadOnlyDictionary<string, double> Accuracies);

/// <summary>Reported after every step; <see cref="Evaluation"/> is set at evaluation steps.</summary>
public sealed record TrainProgress(int Step, int TotalSteps, double Loss, double AuxLoss, double StepTimeSeconds, TimeSpan Eta, EvalResult? Evaluation);

/// <summary>A finished (or stopped) run.</summary>
public sealed record TrainResult(string OutputDir, string ModelPath, IReadOnlyList<EvalResult> Evaluations, bool Done, IReadOnlyList<int> TestEnvs, IReadOnlyList<string> EnvNames);

/// <summary>
/// Default thread counts and evaluation batch sizes. The thread plan decides from the work of one training step (MACs
/// per image x images per step), not per image: a step under 2 GMAC (the 32x32 test models at their small batches)
/// runs its many small ops faster on one thread than on two and leaves the other cores to the data workers; a
/// larger step (MNIST_CNN at DomainBed's 5 x 64 images is ~23 GMAC, ResNet-50 and the 224 ViTs far more) takes every
/// core (its data pipeline is cheap next to its compute). Measured with `sfmoe bench step` and `sfmoe bench train`.
/// </summary>
internal static class ThreadPlan
{
    /// <summary>Steps under this many multiply-accumulates run on the cores the data workers leave.</summary>
    public const long SmallStepMacs = 2_000_000_000L;

    /// <summary>Data workers: half the cores, at least one.</summary>
    public static int Workers(int cores) => Math.Max(1, cores / 2);

    /// <summary>Tensor threads for a training step of <paramref name="macsPerStep"/> multiply-accumulates.</summary>
    public static int Threads(long macsPerStep, int cores, int workers) =>
        macsPerStep < SmallStepMacs ? Math.Max(1, cores - workers) : Math.Max(1, cores);

    /// <summary>MACs of one training step: per image x images per step (saturating).</summary>
    public static long StepMacs(long macsPerImage, int imagesPerStep) =>
        macsPerImage > long.MaxValue / Math.Max(1, imagesPerStep) ? long.MaxValue : macsPerImage * imagesPerStep;

    /// <summary>
    /// Images per evaluation batch. A CNN baseline evaluates twice a training step's images (no gradients or
    /// optimizer state to hold, so it fits where the step fits), between 64 and 1024: its convolutions and
    /// GroupNorms run faster per image on large batches, so evaluation is never slower per image than training. A
    /// ViT keeps 64 (its attention's memory grows with the batch and its matmuls are already large at 64).
    /// </summary>
    public static int EvalBatch(bool cnn, int imagesPerStep) =>
        cnn ? Math.Clamp(2 * imagesPerStep, 64, 1024) : 64;
}
