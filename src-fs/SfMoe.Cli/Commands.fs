/// The sfmoe command line's top level: one case per command (their schemas and bodies are in the *Commands.fs files).
module SfMoe.Cli.Commands

open Argu
open SfMoe.Cli

type Command =
    | [<CliPrefix(CliPrefix.None)>] Pattern of ParseResults<PatternCommands.PatternArgs>
    | [<CliPrefix(CliPrefix.None)>] Models of ParseResults<ModelCommands.ModelsArgs>
    | [<CliPrefix(CliPrefix.None)>] Summary of ParseResults<ModelCommands.SummaryArgs>
    | [<CliPrefix(CliPrefix.None)>] Train of ParseResults<TrainFlags.TrainArgs>
    | [<CliPrefix(CliPrefix.None)>] Evaluate of ParseResults<TrainCommands.EvaluateArgs>
    | [<CliPrefix(CliPrefix.None)>] Predict of ParseResults<TrainCommands.PredictArgs>
    | [<CliPrefix(CliPrefix.None)>] Collect of ParseResults<CollectCommands.CollectArgs>
    | [<CliPrefix(CliPrefix.None)>] Download of ParseResults<DownloadCommands.DownloadArgs>
    | [<CliPrefix(CliPrefix.None)>] Forward of ParseResults<ModelCommands.ForwardArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchCommands.BenchArgs>
    | [<CliPrefix(CliPrefix.None)>] Import of ParseResults<InteropCommands.ImportArgs>
    | [<CliPrefix(CliPrefix.None)>] Export of ParseResults<InteropCommands.ExportArgs>
    | [<CliPrefix(CliPrefix.None)>] Sweep of ParseResults<SweepArgs.SweepArgs>
    | [<CliPrefix(CliPrefix.None)>] Analyze of ParseResults<AnalysisCommands.AnalyzeArgs>
    | [<CliPrefix(CliPrefix.None)>] Plot of ParseResults<AnalysisCommands.PlotArgs>
    | [<CliPrefix(CliPrefix.None)>] Profile of ParseResults<AnalysisCommands.ProfileArgs>
    | [<AltCommandLine("-V")>] Version
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Pattern _ -> "parse a block pattern: canonical form and expanded block kinds"
            | Models _ -> "list the model registry"
            | Summary _ -> "build a model, run it on a random batch, print its block layout and output shape"
            | Train _ -> "train on a DomainBed dataset leaving environments out (default: SF-MoE on the built-in Synthetic dataset)"
            | Evaluate _ -> "accuracy of a model on every environment's in and out split"
            | Predict _ -> "top classes with probabilities for image files"
            | Download _ -> "fetch a dataset DomainBed uses (checksums, resumable) into DomainBed's layout"
            | Collect _ -> "model selection and result tables over runs, exactly as DomainBed (mean +/- standard error over trials)"
            | Forward _ -> "run a model with given weights on an input tensor, write logits, aux loss and routing"
            | Bench _ -> "benchmarks (ratios measured side by side in one run)"
            | Import _ -> "pretrained weights (DeiT, timm, augreg .npz, SF-MoE-DG / GMoE model.pkl, torchvision) into an SfMoe model file, with a full key report"
            | Export _ -> "an SfMoe model file's weights for PyTorch (timm names; .safetensors or torch.save .pth)"
            | Sweep _ -> "DomainBed sweeps: launch jobs locally, in parallel or as a Slurm job array; status, wait, delete-incomplete"
            | Analyze _ -> "look inside a trained model: routing, expert vs attribute, attention maps (PNG, JSON, markdown)"
            | Plot _ -> "training curves of runs from their results.jsonl (PNG)"
            | Profile _ -> "parameters, active parameters, MACs per block, forward/step time and peak memory, next to the dense twin"
            | Version -> "print the version"
