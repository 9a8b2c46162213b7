namespace SfMoe;

/// <summary>
/// A user-facing error: bad input, configuration or file. Its message names the value, key, file or position at
/// fault and is meant to be shown as it is (the CLI prints it on one line and exits with code 2).
/// </summary>
public sealed class SfMoeException : Exception
{
    /// <summary>Creates the error with its message.</summary>
    public SfMoeException(string message) : base(message) { }

    /// <summary>Creates the error with its message and cause.</summary>
    public SfMoeException(string message, Exception inner) : base(message, inner) { }
}
