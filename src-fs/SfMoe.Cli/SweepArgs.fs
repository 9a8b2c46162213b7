/// Argument schemas of `sfmoe sweep launch|status|wait|delete-incomplete` (the implementation is SweepCommands.fs).
module SfMoe.Cli.SweepArgs

open Argu

type LaunchArgs =
    | [<Mandatory>] Output_Dir of dir: string
    | Datasets of names: string list
    | Algorithms of names: string list
    | Test_Envs of indices: int list
    | Single_Test_Envs
    | N_Hparams_From of n: int
    | N_Hparams of n: int
    | N_Trials of n: int
    | Data_Dir of dir: string
    | Launcher of name: string
    | Jobs of n: int
    | Gpus_Per_Job of n: int
    | Threads of n: int
    | Workers of n: int
    | Sfmoe of command: string
    | Partition of name: string
    | Time of limit: string
    | Cpus_Per_Task of n: int
    | Gpus of gpus: string
    | Mem of size: string
    | Max_Concurrent of n: int
    | Job_Name of name: string
    | Sbatch of line: string
    | Max_Array_Size of n: int
    | Dry_Run
    | Wait
    | Timeout of seconds: int
    | Poll of seconds: float
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Output_Dir _ -> "the sweep's folder: sweep.json and one folder per job, named by the hash of its arguments"
            | Datasets _ -> "datasets (default Synthetic); with sweep.json present, leave the sweep options out to relaunch it"
            | Algorithms _ -> "algorithms: ERM, SFMoE, GMoE (default SFMoE)"
            | Test_Envs _ -> "hold out only these environments (default: each environment of each dataset)"
            | Single_Test_Envs -> "single test environments only (default, as DomainBed: also every pair {i, j}, which leave-one-domain-out selection needs)"
            | N_Hparams_From _ -> "first hparams seed (default 0: the default hyperparameters)"
            | N_Hparams _ -> "hparams seeds end here, exclusive (default 20, as DomainBed; 1 = the defaults only)"
            | N_Trials _ -> "trial seeds 0..n-1 (default 3)"
            | Data_Dir _ -> "data folder passed to every job"
            | Launcher _ -> "local (one job at a time, default), parallel (--jobs at once) or slurm (one sbatch job array)"
            | Jobs _ -> "parallel: processes at once (default: the number of cores; with --gpus-per-job: GPUs / N)"
            | Gpus_Per_Job _ ->
                "parallel: N GPUs for each job: GPUs / N jobs at once, each seeing only its own (CUDA_VISIBLE_DEVICES) and run with --device cuda unless the jobs set a device; the GPUs come from SFMOE_GPU_COUNT, else CUDA_VISIBLE_DEVICES, else nvidia-smi -L"
            | Threads _ -> "tensor threads per job (parallel: cores / jobs; slurm: --cpus-per-task; local: train's default)"
            | Workers _ -> "data threads per job (parallel and slurm: threads / 2, at least 1; jobs on GPUs: threads - 1)"
            | Sfmoe _ -> "the command that runs sfmoe in the jobs, e.g. \"dotnet /opt/sfmoe/SfMoe.Cli.dll\" (default: this one; also SFMOE_EXE)"
            | Partition _ -> "slurm: --partition"
            | Time _ -> "slurm: --time per task, e.g. 04:00:00"
            | Cpus_Per_Task _ -> "slurm: --cpus-per-task (default 1; with --gpus 8 per GPU)"
            | Gpus _ -> "slurm: --gpus per task, e.g. 1 or a100:1; the jobs run with --device cuda unless they set a device"
            | Mem _ -> "slurm: --mem per task, e.g. 8G"
            | Max_Concurrent _ -> "slurm: at most this many tasks of the array at once (--array=0-N%M)"
            | Job_Name _ -> "slurm: --job-name (default sfmoe-<folder name>)"
            | Sbatch _ -> "slurm: another #SBATCH line, e.g. --sbatch account=abc or --sbatch \"#SBATCH --qos=high\" (repeatable)"
            | Max_Array_Size _ -> "slurm: tasks per array; more jobs are submitted as several arrays (default 1000)"
            | Dry_Run -> "print the jobs' commands (slurm: the batch script) and change nothing"
            | Wait -> "slurm: wait until the tasks finish, then print the status (exit code 1 unless every job is done)"
            | Timeout _ -> "with --wait: give up after this many seconds"
            | Poll _ -> "with --wait: seconds between squeue calls (default 5)"

type StatusArgs =
    | [<Mandatory>] Output_Dir of dir: string
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Output_Dir _ -> "the sweep's folder"
            | Json -> "print the jobs as JSON"

type WaitArgs =
    | [<Mandatory>] Output_Dir of dir: string
    | Timeout of seconds: int
    | Poll of seconds: float
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Output_Dir _ -> "the sweep's folder"
            | Timeout _ -> "give up after this many seconds (exit code 1)"
            | Poll _ -> "seconds between squeue calls (default 5)"

type DeleteArgs =
    | [<Mandatory>] Output_Dir of dir: string
    | Yes
    | Dry_Run
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Output_Dir _ -> "the sweep's folder"
            | Yes -> "do not ask for confirmation"
            | Dry_Run -> "list what would be deleted"

type SweepArgs =
    | [<CliPrefix(CliPrefix.None)>] Launch of ParseResults<LaunchArgs>
    | [<CliPrefix(CliPrefix.None)>] Status of ParseResults<StatusArgs>
    | [<CliPrefix(CliPrefix.None)>] Wait of ParseResults<WaitArgs>
    | [<CliPrefix(CliPrefix.None)>] Delete_Incomplete of ParseResults<DeleteArgs>
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Launch _ -> "launch the jobs that are not done (incomplete ones resume); extra train options after --"
            | Status _ -> "each job's state (done, incomplete, not launched) and Slurm's state of its task"
            | Wait _ -> "wait until no job of the sweep is queued or running"
            | Delete_Incomplete _ -> "delete the folders of incomplete jobs (not those Slurm still runs)"
