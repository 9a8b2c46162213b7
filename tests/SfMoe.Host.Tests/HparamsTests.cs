using SfMoe.Runs;

namespace SfMoe.Host.Tests;

public class HparamsTests
{
    [Fact]
    public void DefaultsFollowTheAuthorsTables()
    {
        var pacs = Hparams.For("SFMoE", "PACS", 0);
        Assert.Equal(3e-5, (double)pacs["lr"]);
        Assert.Equal(0.0, (double)pacs["weight_decay"]);
        Assert.Equal(32, (int)pacs["batch_size"]);
        Assert.Equal(1e-5, (double)Hparams.For("SFMoE", "VLCS", 0)["lr"]);
        Assert.Equal(1e-4, (double)Hparams.For("ERM", "TerraIncognita", 0)["weight_decay"]);
        Assert.Equal(1e-5, (double)Hparams.For("GMoE", "OfficeHome", 0)["lr"]);
        Assert.Equal(64, (int)Hparams.For("ERM", "RotatedMNIST", 0)["batch_size"]);
        Assert.Equal(1e-3, (double)Hparams.For("ERM", "ColoredMNIST", 0)["lr"]);
    }

    /// <summary>Expected values from numpy: RandomState(seed_hash(seed, name)) with DomainBed's distributions
    /// (python: 10**RandomState(seed_hash(1, 'lr')).uniform(-4.5, -2.5), ...).</summary>
    [Theory]
    [InlineData(1, 8.511453013879485e-05, 32, 0.5)]
    [InlineData(2, 4.670599081369679e-05, 9, 0.5)]
    [InlineData(7, 9.248299940294055e-05, 35, 0.1)]
    public void RandomHyperparametersMatchNumpy(int seed, double lr, int batch, double dropout)
    {
        var h = Hparams.For("SFMoE", "PACS", seed, HparamRandom.Instance);
        Assert.Equal(lr, (double)h["lr"], 15);
        Assert.Equal(batch, (int)h["batch_size"]);
        Assert.Equal(dropout, (double)h["resnet_dropout"]);
        Assert.Equal(0.0, (double)h["weight_decay"]);
    }
}
