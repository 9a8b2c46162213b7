using System.Text.Json;

namespace SfMoe.Runs;

/// <summary>
/// DomainBed's hyperparameter registry for SfMoe's algorithms: defaults (hparams seed 0) follow the authors' tables
/// (sfmoe-spec.md §6); other seeds draw each hyperparameter from its own generator seeded by
/// seed_hash(seed, name), as DomainBed's hparams_registry.
/// </summary>
public static class Hparams
{
    static readonly string[] SmallImages = { "RotatedMNIST", "ColoredMNIST" };

    /// <summary>(learning rate, weight decay) the authors use per dataset: SF-MoE's table for every algorithm but GMoE.</summary>
    static (double Lr, double Wd)? AuthorDefaults(string algorithm, string dataset) =>
        (algorithm, dataset) switch
        {
            ("GMoE", "PACS") => (3e-5, 1e-6),
            ("GMoE", "VLCS") => (3e-5, 1e-6),
            ("GMoE", "OfficeHome") => (1e-5, 1e-6),
            ("GMoE", "TerraIncognita") => (5e-5, 1e-4),
            ("GMoE", "DomainNet") => (5e-5, 0.0),
            ("GMoE", "CUB-DG") => (5e-5, 0.0),
            (_, "PACS") => (3e-5, 0.0),
            (_, "VLCS") => (1e-5, 1e-6),
            (_, "OfficeHome") => (3e-5, 1e-6),
            (_, "TerraIncognita") => (3e-5, 1e-4),
            (_, "DomainNet") => (3e-5, 0.0),
            (_, "CUB-DG") => (3e-5, 0.0),
            (_, "SVIRO") => (3e-5, 0.0),
            _ => null,
        };

    /// <summary>
    /// Hyperparameters of a run as an ordered map (keys sorted as DomainBed prints them). `uniform(name, lo, hi)`
    /// and `choice(name, values)` give the random values for hparams seeds other than 0.
    /// </summary>
    public static SortedDictionary<string, object> For(string algorithm, string dataset, int hparamsSeed, IHparamRandom? random = null)
    {
        var h = new SortedDictionary<string, object>(StringComparer.Ordinal);
        bool draw = hparamsSeed != 0;
        if (draw && random is null) throw new ConfigException("random hyperparameters need a generator");
        bool small = SmallImages.Contains(dataset);
        bool synthetic = dataset == "Synthetic";
        var authors = AuthorDefaults(algorithm, dataset);

        void Def(string name, object dflt, Func<IHparamRandom, object> rnd) => h[name] = draw ? rnd(random!) : dflt;

        Def("data_augmentation", true, _ => true);
        Def("class_balanced", false, _ => false);
        Def("nonlinear_classifier", false, _ => false);
        Def("resnet_dropout", 0.0, r => r.Choice(hparamsSeed, "resnet_dropout", new[] { 0.0, 0.1, 0.5 }));
        Def("freeze_bn", true, _ => true);
        if (small || synthetic)
            Def("lr", 1e-3, r => Math.Pow(10, r.Uniform(hparamsSeed, "lr", -4.5, -2.5)));
        else
            Def("lr", authors?.Lr ?? 5e-5, r => Math.Pow(10, r.Uniform(hparamsSeed, "lr", -4.5, -2.5)));
        if (small || synthetic)
            Def("weight_decay", 0.0, _ => 0.0);
        else
            Def("weight_decay", authors?.Wd ?? 0.0, _ => authors?.Wd ?? 0.0);
        if (small)
            Def("batch_size", 64, r => (int)Math.Pow(2, r.Uniform(hparamsSeed, "batch_size", 3, 9)));
        else if (dataset == "DomainNet")
            Def("batch_size", 32, r => (int)Math.Pow(2, r.Uniform(hparamsSeed, "batch_size", 3, 5)));
        else
            Def("batch_size", 32, r => (int)Math.Pow(2, r.Uniform(hparamsSeed, "batch_size", 3, 5.5)));
        return h;
    }

    /// <summary>Hyperparameters as JSON (sorted keys).</summary>
    public static string ToJson(IReadOnlyDictionary<string, object> h) => JsonSerializer.Serialize(h);
}

/// <summary>Draws a hyperparameter's random value from its own generator (seeded by seed_hash(seed, name)).</summary>
public interface IHparamRandom
{
    /// <summary>U(lo, hi) for the named hyperparameter.</summary>
    double Uniform(int seed, string name, double lo, double hi);
    /// <summary>One of the values for the named hyperparameter.</summary>
    T Choice<T>(int seed, string name, T[] values);
}
