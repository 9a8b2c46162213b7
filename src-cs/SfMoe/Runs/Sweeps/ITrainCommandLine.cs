namespace SfMoe.Runs.Sweeps;

/// <summary>
/// The command line of one training run, as the application that runs a sweep's jobs spells it. The sweep code knows
/// jobs, their DomainBed keys (<see cref="SweepJob.TrainArgs"/>) and their folders, never the flags: the launchers,
/// the Slurm script and sweep.json take the words from here. The sfmoe command line implements it from its declaration
/// of the train flags (<c>src-fs/SfMoe.Cli/TrainFlags.fs</c>).
/// </summary>
public interface ITrainCommandLine
{
    /// <summary>The words after the program that start a training run (sfmoe: ["train"]).</summary>
    IReadOnlyList<string> Command { get; }

    /// <summary>The job's own arguments, from its <see cref="SweepJob.TrainArgs"/>: everything but the output folder
    /// and the resume switch.</summary>
    IReadOnlyList<string> JobArguments(SweepJob job);

    /// <summary>The option followed by the run's folder.</summary>
    string OutputDirFlag { get; }

    /// <summary>The switch that continues the run in that folder from its training state.</summary>
    string ResumeFlag { get; }
}
