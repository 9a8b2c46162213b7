using SfMoe.Imaging;

namespace SfMoe.Data;

/// <summary>Options for <see cref="Datasets.Open"/>.</summary>
public sealed record DatasetOptions
{
    /// <summary>
    /// Seed of the dataset's own randomness: the MNIST permutation and ColoredMNIST's coin flips (DomainBed's
    /// <c>--seed</c>), and the synthetic dataset's rendering (unless <see cref="Synthetic"/> sets its own).
    /// </summary>
    public int Seed { get; init; }

    /// <summary>Settings of the synthetic dataset (size, images per environment); null for the defaults.</summary>
    public SyntheticOptions? Synthetic { get; init; }
}

/// <summary>
/// The dataset registry: DomainBed's datasets as SF-MoE uses them (spec §7.1), the MNIST variants, the procedural
/// <c>Synthetic</c> dataset, and any other folder in DomainBed's layout.
/// </summary>
public static class Datasets
{
    /// <summary>Environment variable read when no data directory is given.</summary>
    public const string DataDirVariable = "SFMOE_DATA_DIR";

    static DatasetSpec Image(string name, string dir, string[] envs, string[] classes, int steps = 5001, int freq = 300) =>
        new(name, dir, envs, classes, 3, 224, 224, steps, freq, Preprocess.ImageNet);

    /// <summary>
    /// The known datasets. Environments are the folder names in sorted (index) order. Classes are listed where known
    /// (PACS, VLCS, OfficeHome, TerraIncognita, the MNIST variants, Synthetic); for DomainNet (345), SVIRO and CUB-DG they
    /// are empty here and come from the folders when the dataset is opened. Steps and checkpoint frequencies are
    /// SF-MoE's (DomainNet: 15001 steps, evaluation every 500; DomainBed's own are 5001 and 1000).
    /// </summary>
    public static readonly IReadOnlyList<DatasetSpec> Known =
    [
        Image("PACS", "PACS", ["art_painting", "cartoon", "photo", "sketch"],
            ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]),
        Image("VLCS", "VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"], ["bird", "car", "chair", "dog", "person"]),
        Image("OfficeHome", "office_home", ["Art", "Clipart", "Product", "Real World"],
        [
            "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar", "Candles",
            "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser", "Exit_Sign", "Fan",
            "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer", "Helmet", "Kettle", "Keyboard",
            "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse", "Mug", "Notebook", "Oven", "Pan",
            "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin", "Radio", "Refrigerator", "Ruler",
            "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda", "Speaker", "Spoon", "TV", "Table", "Telephone",
            "ToothBrush", "Toys", "Trash_Can", "Webcam",
        ]),
        Image("TerraIncognita", "terra_incognita", ["location_100", "location_38", "location_43", "location_46"],
            ["bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel"]),
        Image("DomainNet", "domain_net", ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"], [],
            steps: 15001, freq: 500),
        Image("SVIRO", "sviro", ["aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe"], []),
        Image("CUB-DG", "CUB_DG", ["Candy", "Mosaic", "Natural", "Udnie"], []),
        new("RotatedMNIST", "MNIST", ["0", "15", "30", "45", "60", "75"], ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            1, 28, 28, 5001, 100, Preprocess.Mnist),
        new("ColoredMNIST", "MNIST", ["+90%", "+80%", "-90%"], ["0", "1"], 2, 28, 28, 5001, 100, Preprocess.Mnist),
        SyntheticDataset.DefaultSpec,
    ];

    /// <summary>DomainBed's short environment names (its ENVIRONMENTS lists), by dataset, e.g. PACS: A, C, P, S.</summary>
    public static readonly IReadOnlyDictionary<string, IReadOnlyList<string>> ShortEnvironmentNames =
        new Dictionary<string, IReadOnlyList<string>>
        {
            ["PACS"] = ["A", "C", "P", "S"], ["VLCS"] = ["C", "L", "S", "V"], ["OfficeHome"] = ["A", "C", "P", "R"],
            ["TerraIncognita"] = ["L100", "L38", "L43", "L46"], ["DomainNet"] = ["clip", "info", "paint", "quick", "real", "sketch"],
            ["SVIRO"] = ["aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe"],
            ["CUB-DG"] = ["Candy", "Mosaic", "Natural", "Udnie"], ["RotatedMNIST"] = ["0", "15", "30", "45", "60", "75"],
            ["ColoredMNIST"] = ["+90%", "+80%", "-90%"], ["Synthetic"] = ["cartoon", "painting", "photo", "sketch"],
        };

    /// <summary>Other names accepted for the known datasets (case-insensitive): DomainBed's class names and folder names.</summary>
    static readonly Dictionary<string, string> Aliases = new(StringComparer.OrdinalIgnoreCase)
    {
        ["CUB"] = "CUB-DG", ["CUB_DG"] = "CUB-DG", ["CUBDG"] = "CUB-DG", ["office_home"] = "OfficeHome",
        ["terra_incognita"] = "TerraIncognita", ["domain_net"] = "DomainNet", ["sviro"] = "SVIRO",
        ["synthetic"] = "Synthetic", ["shapes"] = "Synthetic",
    };

    /// <summary>The names of the known datasets.</summary>
    public static IReadOnlyList<string> Names => Known.Select(s => s.Name).ToArray();

    /// <summary>The spec of a known dataset by name or alias (case-insensitive), or null.</summary>
    public static DatasetSpec? TryGetSpec(string name)
    {
        if (Aliases.TryGetValue(name, out var canonical)) name = canonical;
        return Known.FirstOrDefault(s => string.Equals(s.Name, name, StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>The spec of a known dataset; throws <see cref="SfMoeException"/> listing the known names otherwise.</summary>
    public static DatasetSpec GetSpec(string name) =>
        TryGetSpec(name) ?? throw new DatasetException($"unknown dataset {name}; known datasets: {string.Join(", ", Names)}");

    /// <summary>
    /// The data directory to use: <paramref name="dataDir"/>, else the <c>SFMOE_DATA_DIR</c> environment variable;
    /// throws when neither is set.
    /// </summary>
    public static string ResolveDataDir(string? dataDir)
    {
        var d = string.IsNullOrWhiteSpace(dataDir) ? Environment.GetEnvironmentVariable(DataDirVariable) : dataDir;
        if (string.IsNullOrWhiteSpace(d))
            throw new DatasetException($"no data directory given: pass --data-dir or set {DataDirVariable}");
        return Path.GetFullPath(d);
    }

    /// <summary>
    /// Opens a dataset by name. Known image datasets are read from <c>dataDir/&lt;DirName&gt;</c> (DomainBed's layout),
    /// the MNIST variants from the idx files (<see cref="MnistData.CandidateFolders"/>), <c>Synthetic</c> needs no files.
    /// Any other name is opened as a custom dataset if <c>dataDir/&lt;name&gt;</c> (or the name itself, as a path) is a
    /// folder in DomainBed's layout. <paramref name="decode"/> decodes image files (required for image folders; e.g.
    /// <c>ImageCodec.Decode</c>) and must throw <see cref="ImageLoadException"/> for files it cannot read.
    /// Throws <see cref="SfMoeException"/> with a message naming the folder or file at fault.
    /// </summary>
    public static IMultiDomainDataset Open(string name, string? dataDir, Func<string, ImageU8>? decode, DatasetOptions? options = null)
    {
        options ??= new DatasetOptions();
        var spec = TryGetSpec(name);
        if (spec is { Name: "Synthetic" })
            return new SyntheticDataset(options.Synthetic ?? new SyntheticOptions { Seed = options.Seed });
        if (spec is null && LooksLikePath(name) && Directory.Exists(name))
            return OpenFolder(name, decode);

        string dir = ResolveDataDir(dataDir);
        if (!Directory.Exists(dir))
            throw new DatasetException($"data directory {dir} does not exist");
        if (spec is null)
        {
            string custom = Path.Combine(dir, name);
            if (Directory.Exists(custom)) return OpenFolder(custom, decode);
            throw new DatasetException(
                $"unknown dataset {name}: not a known dataset ({string.Join(", ", Names)}) and {custom} is not a folder");
        }
        switch (spec.Name)
        {
            case "RotatedMNIST": return MnistEnvironments.Rotated(MnistData.Load(dir), spec, options.Seed);
            case "ColoredMNIST": return MnistEnvironments.Colored(MnistData.Load(dir), spec, options.Seed);
        }
        string root = Path.Combine(dir, spec.DirName);
        if (!Directory.Exists(root))
            throw new DatasetException(
                $"{spec.Name}: dataset folder not found: expected {root} (the folder {spec.DirName}/ under the data directory); " +
                $"run `sfmoe download {spec.Name} --data-dir {dir}` or point --data-dir at the folder that holds {spec.DirName}/");
        return ImageFolderDataset.Open(root, spec, decode ?? throw new ArgumentNullException(nameof(decode), "an image decoder is needed for " + spec.Name));
    }

    /// <summary>
    /// Opens any folder in DomainBed's layout (<c>path/&lt;env&gt;/&lt;class&gt;/&lt;images&gt;</c>) as a dataset named after the folder,
    /// with the image datasets' defaults (224x224 RGB, 5001 steps, evaluation every 300, ImageNet preprocessing).
    /// </summary>
    public static ImageFolderDataset OpenFolder(string path, Func<string, ImageU8>? decode, DatasetSpec? template = null)
    {
        ArgumentNullException.ThrowIfNull(decode);
        string full = Path.GetFullPath(path);
        if (!Directory.Exists(full)) throw new DatasetException($"dataset folder {full} not found");
        string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(full));
        template ??= Image(name, name, [], []);
        return ImageFolderDataset.Open(full, template, decode);
    }

    static bool LooksLikePath(string name) =>
        Path.IsPathRooted(name) || name.Contains('/') || name.Contains(Path.DirectorySeparatorChar) || name.StartsWith('.');
}
