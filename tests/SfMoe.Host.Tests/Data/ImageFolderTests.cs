using SfMoe.Data;
using SfMoe.Imaging;
using static SfMoe.Host.Tests.Data.DataTestSupport;

namespace SfMoe.Host.Tests.Data;

/// <summary>DomainBed's image-folder layout: order, labels, errors named before training, undecodable files.</summary>
public class ImageFolderTests
{
    static readonly byte[] Red = Png(4, 3, 255, 0, 0);

    static void Img(string path, byte[]? bytes = null)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, bytes ?? Red);
    }

    /// <summary>A PACS-shaped tree: 4 environments x 7 classes, <paramref name="perClass"/> images each.</summary>
    static string MakePacs(TempDir tmp, int perClass = 2)
    {
        string root = tmp.Sub("PACS");
        var spec = Datasets.GetSpec("PACS");
        foreach (var env in spec.Environments)
            foreach (var c in spec.Classes)
                for (int i = 0; i < perClass; i++) Img(Path.Combine(root, env, c, $"{c}_{i}.png"));
        return root;
    }

    [Fact]
    public void PacsLayoutOpensWithSortedEnvironmentsAndClasses()
    {
        using var tmp = new TempDir();
        MakePacs(tmp);
        var ds = Datasets.Open("PACS", tmp.Path, SkiaDecode);
        Assert.Equal(["art_painting", "cartoon", "photo", "sketch"], ds.Spec.Environments);
        Assert.Equal(["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"], ds.Spec.Classes);
        Assert.Equal((5001, 300, 3, 224), (ds.Spec.Steps, ds.Spec.CheckpointFreq, ds.Spec.Channels, ds.Spec.Height));
        var env = ds.Environments[2];
        Assert.Equal(14, env.Count);
        Assert.Equal([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6], Enumerable.Range(0, 14).Select(env.LabelOf));
        var img = env.Load(3);
        Assert.Equal((3, 4, 3, (byte)255, (byte)0), (img.Height, img.Width, img.Channels, img[0, 0, 0], img[0, 0, 1]));
        Assert.Null(env.KeypointsOf(0));
        Assert.EndsWith(Path.Combine("PACS", "photo", "elephant", "elephant_1.png"), env.SourceOf(3));
    }

    [Fact]
    public void OrderIsPythonsSortedOsWalkWithCaseInsensitiveExtensions()
    {
        using var tmp = new TempDir();
        string cls = tmp.Sub("Custom", "env", "cls");
        // names chosen where ordinal, culture and code-point orders and os.walk's path order matter
        Img(Path.Combine(cls, "b.PNG"));
        Img(Path.Combine(cls, "B.png"));
        Img(Path.Combine(cls, "a.jpeg"));
        Img(Path.Combine(cls, "_x.Jpg"));
        File.WriteAllText(Path.Combine(cls, "notes.txt"), "not an image");
        Img(Path.Combine(cls, "sub", "z.png"));
        Img(Path.Combine(cls, "sub b", "y.png"));      // sorted: "/sub" < "/sub b" < "/sub/deeper" (' ' < '/'), as Python
        Img(Path.Combine(cls, "sub", "deeper", "x.png"));
        Img(Path.Combine(cls, "\uFB01.png"));           // BMP character above the surrogate range
        Img(Path.Combine(cls, "\U0001F600.png"));      // astral: after U+FB01 in code-point order (not in UTF-16 order)
        var ds = Datasets.Open("Custom", tmp.Path, SkiaDecode);
        var env = ds.Environments[0];
        var rel = Enumerable.Range(0, env.Count).Select(i => Path.GetRelativePath(cls, env.SourceOf(i)).Replace('\\', '/')).ToArray();
        Assert.Equal(["B.png", "_x.Jpg", "a.jpeg", "b.PNG", "\uFB01.png", "\U0001F600.png", "sub/z.png", "sub b/y.png", "sub/deeper/x.png"], rel);
        Assert.Equal(Datasets.OpenFolder(tmp.Sub("Custom"), SkiaDecode).Spec.Environments, ds.Spec.Environments);
        Assert.Equal("Custom", ds.Spec.Name);
    }

    [Fact]
    public void PathsAreAcceptedAsDatasetNames()
    {
        using var tmp = new TempDir();
        MakePacs(tmp, 1);
        var ds = Datasets.Open(tmp.Sub("PACS"), dataDir: null, SkiaDecode);
        Assert.Equal(4, ds.Environments.Count);
    }

    [Fact]
    public void TheDataDirectoryCanComeFromTheEnvironment()
    {
        using var tmp = new TempDir();
        MakePacs(tmp, 1);
        var old = Environment.GetEnvironmentVariable(Datasets.DataDirVariable);
        try
        {
            Environment.SetEnvironmentVariable(Datasets.DataDirVariable, tmp.Path);
            Assert.Equal(4, Datasets.Open("PACS", dataDir: null, SkiaDecode).Environments.Count);
            Environment.SetEnvironmentVariable(Datasets.DataDirVariable, null);
            var e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("PACS", dataDir: null, SkiaDecode));
            Assert.Contains("no data directory given", e.Message);
            Assert.Contains("SFMOE_DATA_DIR", e.Message);
        }
        finally { Environment.SetEnvironmentVariable(Datasets.DataDirVariable, old); }
    }

    [Fact]
    public void MissingDataDirAndDatasetFolderAreNamedWithAHint()
    {
        using var tmp = new TempDir();
        var e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("PACS", tmp.Sub("nope"), SkiaDecode));
        Assert.Contains(tmp.Sub("nope"), e.Message);
        Assert.Contains("does not exist", e.Message);

        e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("OfficeHome", tmp.Path, SkiaDecode));
        Assert.Contains(tmp.Sub("office_home"), e.Message);
        Assert.Contains("sfmoe download OfficeHome", e.Message);

        e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("NoSuchSet", tmp.Path, SkiaDecode));
        Assert.Contains("unknown dataset NoSuchSet", e.Message);
        Assert.Contains("PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, SVIRO, CUB-DG, RotatedMNIST, ColoredMNIST, Synthetic", e.Message);
    }

    [Fact]
    public void AClassMissingInOneEnvironmentNamesBoth()
    {
        using var tmp = new TempDir();
        string root = MakePacs(tmp, 1);
        Directory.Delete(Path.Combine(root, "photo", "giraffe"), recursive: true);
        var e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("PACS", tmp.Path, SkiaDecode));
        Assert.Contains("class folder 'giraffe' is missing in environment 'photo'", e.Message);
        Assert.Contains(Path.Combine(root, "photo", "giraffe"), e.Message);

        // an extra class in a later environment is the same error, seen from the other side
        Directory.CreateDirectory(Path.Combine(root, "photo", "giraffe"));
        Img(Path.Combine(root, "photo", "giraffe", "g.png"));
        Img(Path.Combine(root, "sketch", "zebra", "z.png"));
        e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("PACS", tmp.Path, SkiaDecode));
        Assert.Contains("class folder 'zebra' is missing in environment 'art_painting'", e.Message);
    }

    [Fact]
    public void EmptyEnvironmentsAndClassesWithoutImagesAreErrors()
    {
        using var tmp = new TempDir();
        string root = MakePacs(tmp, 1);
        Directory.CreateDirectory(Path.Combine(root, "zz_empty"));
        var e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("PACS", tmp.Path, SkiaDecode));
        Assert.Contains($"environment folder {Path.Combine(root, "zz_empty")} is empty", e.Message);
        Directory.Delete(Path.Combine(root, "zz_empty"));

        foreach (var f in Directory.GetFiles(Path.Combine(root, "cartoon", "horse"))) File.Delete(f);
        File.WriteAllText(Path.Combine(root, "cartoon", "horse", "readme.txt"), "x");
        e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("PACS", tmp.Path, SkiaDecode));
        Assert.Contains($"no image files", e.Message);
        Assert.Contains(Path.Combine(root, "cartoon", "horse"), e.Message);

        using var tmp2 = new TempDir();
        Directory.CreateDirectory(tmp2.Sub("VLCS"));
        e = Assert.ThrowsAny<SfMoeException>(() => Datasets.Open("VLCS", tmp2.Path, SkiaDecode));
        Assert.Contains("has no environment folders", e.Message);
    }

    [Fact]
    public void UndecodableFilesKeepTheirIndexAndThrowImageLoadExceptionOnLoad()
    {
        using var tmp = new TempDir();
        string root = MakePacs(tmp, 2);
        File.WriteAllText(Path.Combine(root, "sketch", "dog", "dog_0.png"), "truncated garbage");
        var env = Datasets.Open("PACS", tmp.Path, SkiaDecode).Environments[3];
        Assert.Equal(14, env.Count);
        var e = Assert.Throws<ImageLoadException>(() => env.Load(0));
        Assert.Contains("dog_0.png", e.Message);
        Assert.Equal(3, env.Load(1).Channels);

        // any decoder failure becomes an ImageLoadException naming the file
        var env2 = Datasets.Open("PACS", tmp.Path, _ => throw new IOException("disk on fire")).Environments[0];
        var e2 = Assert.Throws<ImageLoadException>(() => env2.Load(0));
        Assert.Contains("disk on fire", e2.Message);
        Assert.Contains("art_painting", e2.Source_);
    }

    [Fact]
    public void RegistryHasSfMoesStepsAndDomainBedsNames()
    {
        var dn = Datasets.GetSpec("DomainNet");
        Assert.Equal((15001, 500, "domain_net"), (dn.Steps, dn.CheckpointFreq, dn.DirName));
        Assert.Equal("CUB-DG", Datasets.GetSpec("CUB").Name);
        Assert.Equal("CUB_DG", Datasets.GetSpec("cub-dg").DirName);
        Assert.Equal("OfficeHome", Datasets.GetSpec("office_home").Name);
        Assert.Equal(65, Datasets.GetSpec("OfficeHome").Classes.Count);
        Assert.Equal(["location_100", "location_38", "location_43", "location_46"], Datasets.GetSpec("TerraIncognita").Environments);
        foreach (var s in Datasets.Known)
        {
            if (s.Preprocess == Preprocess.ImageNet)   // image folders: environments and classes are sorted folder names
            {
                Assert.Equal(s.Environments.OrderBy(x => x, PyStringComparer.Instance), s.Environments);
                Assert.Equal(s.Classes.OrderBy(x => x, PyStringComparer.Instance), s.Classes);
            }
            Assert.Equal(s.Environments.Count, Datasets.ShortEnvironmentNames[s.Name].Count);
            Assert.True(s.Steps > 0 && s.CheckpointFreq > 0);
        }
        var e = Assert.ThrowsAny<SfMoeException>(() => Datasets.GetSpec("PAC"));
        Assert.Contains("known datasets: PACS", e.Message);
    }
}
