
namespace SfMoe.Data;

/// <summary>How the downloaded files become the dataset folder.</summary>
public enum ArchiveLayout
{
    /// <summary>Unpack every archive; the archive's folder <see cref="DatasetDownload.TopFolder"/> becomes the dataset folder (PACS: kfold).</summary>
    RenameTopFolder,
    /// <summary>Unpack every archive into the dataset folder (DomainNet: one zip per domain), then delete DomainBed's duplicate list.</summary>
    MergeInto,
    /// <summary>TerraIncognita: sort the camera-trap images into location_*/category/ from the annotation JSON files.</summary>
    TerraIncognita,
    /// <summary>The files themselves (MNIST's .gz idx files): kept in <c>raw/</c> and decompressed beside them, as torchvision does.</summary>
    RawFiles,
}

/// <summary>One file to download.</summary>
/// <param name="FileName">Local name (and archive type, from the extension).</param>
/// <param name="Url">Where DomainBed gets it (Google Drive <c>uc?id=</c> links are fetched through Drive's direct-download endpoint).</param>
/// <param name="MirrorPath">Path below a mirror's base URL (<see cref="DownloadOptions.Mirror"/>), e.g. "PACS/PACS.zip".</param>
/// <param name="Sha256">Expected SHA-256 (lower-case hex), or null when not known: then the computed one is reported.</param>
/// <param name="Size">Expected size in bytes, or null.</param>
/// <param name="Md5">Expected MD5 as published upstream, or null; checked as well when given.</param>
public sealed record DownloadFile(string FileName, string Url, string MirrorPath, string? Sha256 = null, long? Size = null, string? Md5 = null)
{
    /// <summary>Other URLs tried, in order, when <see cref="Url"/> fails with an HTTP error (not used with a mirror).</summary>
    public IReadOnlyList<string> AlternateUrls { get; init; } = [];
    /// <summary>Where the checksums come from, or why there are none.</summary>
    public string? Note { get; init; }
}

/// <summary>How to fetch one dataset.</summary>
/// <param name="Dataset">Dataset name (Datasets registry).</param>
/// <param name="DirName">Folder under the data directory.</param>
/// <param name="Files">The files to download.</param>
/// <param name="Layout">How they become the folder.</param>
/// <param name="TopFolder">For <see cref="ArchiveLayout.RenameTopFolder"/>: the archive's folder that becomes the dataset folder.</param>
public sealed record DatasetDownload(string Dataset, string DirName, IReadOnlyList<DownloadFile> Files, ArchiveLayout Layout, string? TopFolder = null);

/// <summary>
/// Where DomainBed's download.py gets each dataset, and the checksums known for those files. SHA-256 values are pinned
/// only where a public source states them; the rest are null (the downloader then prints the computed value).
/// </summary>
internal static class DownloadCatalog
{
    const string Drive = "https://drive.google.com/uc?id=";
    const string DomainNetBase = "http://csr.bu.edu/ftp/visda/2019/multi-source/";
    const string Lila = "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps/";
    const string NoSha = "no SHA-256 is published; the downloader prints the computed one";

    static DownloadFile Mnist(string name, string sha256, long size, string md5) =>
        new(name, "https://ossci-datasets.s3.amazonaws.com/mnist/" + name, "MNIST/" + name, sha256, size, md5)
        {
            AlternateUrls = ["http://yann.lecun.com/exdb/mnist/" + name, "https://storage.googleapis.com/cvdf-datasets/mnist/" + name],
            Note = "SHA-256 and size as published by several public MNIST fetchers (TensorFlow's mirror); MD5 as in torchvision",
        };

    static DownloadFile DomainNet(string path, string md5) =>
        new(Path.GetFileName(path), DomainNetBase + path, "domain_net/" + Path.GetFileName(path), Md5: md5)
        { Note = "MD5 as published by public DomainNet loaders; " + NoSha };

    /// <summary>Every dataset that can be downloaded.</summary>
    public static readonly IReadOnlyList<DatasetDownload> All =
    [
        new("PACS", "PACS", [new("PACS.zip", Drive + "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", "PACS/PACS.zip") { Note = NoSha }],
            ArchiveLayout.RenameTopFolder, "kfold"),
        new("VLCS", "VLCS", [new("VLCS.tar.gz", Drive + "1skwblH1_okBwxWxmRsp9_qi15hyPpxg8", "VLCS/VLCS.tar.gz") { Note = NoSha }],
            ArchiveLayout.RenameTopFolder, "VLCS"),
        new("OfficeHome", "office_home",
            [new("office_home.zip", Drive + "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC", "office_home/office_home.zip") { Note = NoSha }],
            ArchiveLayout.RenameTopFolder, "OfficeHomeDataset_10072016"),
        new("TerraIncognita", "terra_incognita",
        [
            new("terra_incognita_images.tar.gz", Lila + "eccv_18_all_images_sm.tar.gz", "terra_incognita/eccv_18_all_images_sm.tar.gz") { Note = NoSha },
            new("eccv_18_annotations.tar.gz", Lila + "eccv_18_annotations.tar.gz", "terra_incognita/eccv_18_annotations.tar.gz") { Note = NoSha },
        ], ArchiveLayout.TerraIncognita),
        new("DomainNet", "domain_net",
        [
            DomainNet("groundtruth/clipart.zip", "cd0d8f2d77a4e181449b78ed62bccf1e"),
            DomainNet("infograph.zip", "720380b86f9e6ab4805bb38b6bd135f8"),
            DomainNet("groundtruth/painting.zip", "1ae32cdb4f98fe7ab5eb0a351768abfd"),
            DomainNet("quickdraw.zip", "bdc1b6f09f277da1a263389efe0c7a66"),
            DomainNet("real.zip", "dcc47055e8935767784b7162e7c7cca6"),
            DomainNet("sketch.zip", "658d8009644040ff7ce30bb2e820850f"),
        ], ArchiveLayout.MergeInto),
        new("SVIRO", "sviro",
            [new("sviro_grayscale_rectangle_classification.zip", "https://sviro.kl.dfki.de/?wpdmdl=1731", "sviro/sviro_grayscale_rectangle_classification.zip") { Note = NoSha }],
            ArchiveLayout.RenameTopFolder, "SVIRO_DOMAINBED"),
        new("MNIST", "MNIST",
        [
            Mnist("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            Mnist("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881, "d53e105ee54ea40749a09fcbcd1e9432"),
            Mnist("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877, "9fb629c4189551a2d022fa330f9573f3"),
            Mnist("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542, "ec29112dd5afa0611ce80d1b7f02629c"),
        ], ArchiveLayout.RawFiles),
    ];

    /// <summary>
    /// The recipe for a dataset name (registry names and aliases; RotatedMNIST and ColoredMNIST fetch MNIST). Throws
    /// <see cref="SfMoeException"/> for datasets without a download (CUB-DG, Synthetic) and unknown names.
    /// </summary>
    public static DatasetDownload Get(string dataset)
    {
        string name = dataset;
        if (!string.Equals(name, "MNIST", StringComparison.OrdinalIgnoreCase))
        {
            var spec = Datasets.TryGetSpec(dataset)
                ?? throw new DatasetException($"unknown dataset {dataset}; downloadable: {string.Join(", ", All.Select(d => d.Dataset))}");
            name = spec.Name switch { "RotatedMNIST" or "ColoredMNIST" => "MNIST", _ => spec.Name };
            if (name == "CUB-DG")
                throw new DatasetException("CUB-DG has no public download (SF-MoE's code has no generation script); put it at <data directory>/CUB_DG/<env>/<class>/<images>");
            if (name == "Synthetic")
                throw new DatasetException("Synthetic needs no download: it is rendered on the fly (SyntheticDataset.WriteImageFolder writes a copy)");
        }
        return All.First(d => string.Equals(d.Dataset, name, StringComparison.OrdinalIgnoreCase));
    }
}
