namespace SfMoe;

/// <summary>Overrides applied to a registry model when it is created. Unset properties keep the registry's values.</summary>
public sealed class ModelOptions
{
    /// <summary>Block pattern or preset (<c>[S,F]x6</c>, <c>sfmoe-dg</c>, ...); its length must equal the depth.</summary>
    public string? Pattern { get; set; }
    /// <summary>Number of classes of the head(s).</summary>
    public int? NumClasses { get; set; }
    /// <summary>Input image size (square); the position embedding is sized for it.</summary>
    public int? ImageSize { get; set; }
    /// <summary>Seed for the weight initialisation; null draws from torch's global generator.</summary>
    public long? Seed { get; set; }
    /// <summary>Device: "cpu" (default), "cuda" or "cuda:N".</summary>
    public string Device { get; set; } = "cpu";
}
