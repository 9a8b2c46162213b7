namespace SfMoe.Data;

/// <summary>Environment names by dataset name, for result tables (DomainBed's short names where it has them).</summary>
public static class DatasetNames
{
    /// <summary>The environments of a known dataset, or null.</summary>
    public static IReadOnlyList<string>? EnvironmentsOf(string dataset) =>
        Datasets.ShortEnvironmentNames.TryGetValue(dataset, out var names) ? names : Datasets.TryGetSpec(dataset)?.Environments;
}
