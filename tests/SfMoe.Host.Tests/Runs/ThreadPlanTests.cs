using SfMoe.Core;
using SfMoe.Runs;

namespace SfMoe.Host.Tests.Runs;

/// <summary>The default thread plan decides from a training step's work (MACs per image x images per step), and
/// evaluation batches of the CNN baselines grow with the step (measured with `sfmoe bench step`: MNIST_CNN at
/// DomainBed's 5 x 64 images runs faster on 2 threads than on 1).</summary>
public class ThreadPlanTests
{
    static long Macs(string model, int chans, int size) =>
        Summary.macsPerImage(ModelSpec.resolve(ModelSpec.Create(ModelSpec.Source.NewNamed(model), null, null, null,
            Microsoft.FSharp.Core.FSharpOption<ModelSpec.DataShape>.Some(new ModelSpec.DataShape(10, chans, size)))));

    [Fact]
    public void MnistCnnAtDomainBedsBatchTakesEveryCoreThoughItsImagesAreSmall()
    {
        long perImage = Macs("mnist_cnn", 1, 28);
        Assert.InRange(perImage, 70_000_000L, 75_000_000L); // ~72.7 MMAC: far under the old 1 GMAC/image cut
        long step = ThreadPlan.StepMacs(perImage, 5 * 64);
        Assert.True(step > ThreadPlan.SmallStepMacs);
        Assert.Equal(2, ThreadPlan.Threads(step, cores: 2, workers: ThreadPlan.Workers(2)));
        Assert.Equal(8, ThreadPlan.Threads(step, cores: 8, workers: ThreadPlan.Workers(8)));
    }

    [Fact]
    public void SmallStepsLeaveTheDataWorkersTheirCores()
    {
        long perImage = Macs("sfmoe_test_patch8_32", 3, 32);
        long step = ThreadPlan.StepMacs(perImage, 2 * 32);
        Assert.True(step < ThreadPlan.SmallStepMacs, $"{step}");
        Assert.Equal(1, ThreadPlan.Threads(step, cores: 2, workers: 1));
        Assert.Equal(4, ThreadPlan.Threads(step, cores: 8, workers: 4));
        Assert.Equal(1, ThreadPlan.Threads(step, cores: 1, workers: 1));
        // a large model at one image per step is still a large step
        Assert.Equal(2, ThreadPlan.Threads(ThreadPlan.StepMacs(Macs("resnet50", 3, 224), 1), 2, 1));
        Assert.Equal(long.MaxValue, ThreadPlan.StepMacs(long.MaxValue / 2, 3));
    }

    [Theory]
    [InlineData(true, 320, 640)]
    [InlineData(true, 24, 64)]
    [InlineData(true, 5000, 1024)]
    [InlineData(false, 320, 64)]
    [InlineData(false, 8, 64)]
    public void EvaluationBatchesOfCnnsAreTwiceTheStepWithinBounds(bool cnn, int stepImages, int expected) =>
        Assert.Equal(expected, ThreadPlan.EvalBatch(cnn, stepImages));
}
