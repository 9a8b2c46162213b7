/// The argument schema of `sfmoe train` (what each flag sets, and which flags a sweep sets, is TrainFlags.fs).
module SfMoe.Cli.TrainArgs

open Argu

type TrainArgs =
    | Dataset of name: string
    | Data_Dir of dir: string
    | Test_Env of index: int
    | Algorithm of name: string
    | Model of name: string
    | Model_Config of file: string
    | Pattern of pattern: string
    | Steps of n: int
    | Checkpoint_Freq of n: int
    | Batch_Size of n: int
    | Lr of x: float
    | Weight_Decay of x: float
    | Optimizer of name: string
    | Seed of n: int
    | Trial_Seed of n: int
    | Hparams_Seed of n: int
    | Threads of n: int
    | Workers of n: int
    | Device of device: string
    | [<Mandatory>] Output_Dir of dir: string
    | Resume
    | Eval_Cache_Mb of mb: int
    | Train_Cache_Mb of mb: int
    | Synthetic_Size of n: int
    | Pretrained of file: string
    | Pretrained_Format of format: string
    | Experts of mode: string
    | No_Timings
    | Quiet
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Dataset _ -> "PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, SVIRO, CUB-DG, RotatedMNIST, ColoredMNIST, a folder in DomainBed's layout, or Synthetic (default: the built-in Synthetic dataset)"
            | Data_Dir _ -> "folder holding the datasets (DomainBed's --data_dir)"
            | Test_Env _ -> "held-out environment index (repeatable; default 0)"
            | Algorithm _ -> "ERM, SFMoE (default) or GMoE"
            | Model _ -> "registry model (sfmoe models) or resnet50 / mnist_cnn; default by algorithm and dataset"
            | Model_Config _ -> "model config JSON file instead of --model"
            | Pattern _ -> "block pattern or preset overriding the model's"
            | Steps _ -> "training steps (default: the dataset's, e.g. 5001)"
            | Checkpoint_Freq _ -> "evaluate and checkpoint every K steps (default: the dataset's, e.g. 300)"
            | Batch_Size _ -> "images per training environment per step (default: hparams registry)"
            | Lr _ -> "learning rate (default: hparams registry, the authors' per dataset)"
            | Weight_Decay _ -> "weight decay (default: hparams registry)"
            | Optimizer _ -> "adam (L2 weight decay, as the authors; default) or adamw"
            | Seed _ -> "seed of init, data order, augmentation and random choices (default 0)"
            | Trial_Seed _ -> "seed of the in/out splits (default 0)"
            | Hparams_Seed _ -> "seed of random hyperparameters (0: defaults)"
            | Threads _ -> "CPU threads for tensor ops (default: all cores)"
            | Workers _ -> "threads decoding and augmenting images (default: half the cores)"
            | Device _ -> "cpu (default), cuda or cuda:N"
            | Output_Dir _ -> "run folder: results.jsonl, model.safetensors, train_state.safetensors, log.txt, done"
            | Resume -> "continue the run in --output-dir from its last checkpoint"
            | Eval_Cache_Mb _ -> "memory budget for evaluation images kept decoded and resized (default 2048)"
            | Train_Cache_Mb _ -> "memory budget for training images kept decoded (default 2048; 0 decodes at every use, as DomainBed)"
            | Synthetic_Size _ -> "images per environment of the Synthetic dataset"
            | Pretrained _ -> "initial weights (see sfmoe import): a checkpoint file"
            | Pretrained_Format _ -> "deit, timm, augreg, sfmoe-dg, gmoe or torchvision"
            | Experts _ -> "sparse blocks from a dense checkpoint: copy (GMoE) or random (SF-MoE as released; default for SF-MoE)"
            | No_Timings -> "write 0 for step_time and mem_gb, so results.jsonl is reproducible byte for byte"
            | Quiet -> "no progress output (warnings still go to stderr)"
