/// Networks: the ViT/SF-MoE model or a CNN baseline with its classifier, built from a resolved `Architecture`
/// (see ModelSpec), and their forward pass in the current mode.
module SfMoe.Core.Networks

open System
open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Config
open SfMoe.Core.Layers

/// A network: the ViT/SF-MoE model or a CNN baseline with a linear classifier.
type Network =
    | VitNet of Vit.SfMoeVit
    | ResNetNet of root: Node * ResNet50: Backbones.ResNet50 * classifier: Linear * dropout: float
    | MnistNet of root: Node * Backbones.MnistCnn * classifier: Linear

    member this.Module: Module =
        match this with
        | VitNet v -> v :> Module
        | ResNetNet(root, _, _, _) -> root :> Module
        | MnistNet(root, _, _) -> root :> Module

    /// Training or eval mode (a ResNet's BatchNorms stay frozen in eval mode, as DomainBed's freeze_bn).
    member this.SetTraining(training: bool) =
        this.Module.train training |> ignore
        match this with
        | ResNetNet(_, r, _, _) -> for n in Backbones.resnetNorms r do n.eval () |> ignore
        | _ -> ()

    /// The backbone's name in model files: "vit", "resnet50" or "mnist_cnn".
    member this.Kind =
        match this with
        | VitNet _ -> "vit"
        | ResNetNet _ -> CnnKind.name ResNet50
        | MnistNet _ -> CnnKind.name MnistCnn

/// The outputs an update needs: logits, the summed aux loss, and routing records when asked for.
type NetOutput =
    { Logits: Tensor
      Aux: Tensor
      Routing: (int * Moe.Record) list }

/// Build a CNN baseline with `numClasses` outputs on `dd` (weights drawn from torch's global generator, which
/// the caller seeds).
let resnet (dd: Dd) (inChans: int) (numClasses: int) (dropout: float) : Network =
    let r = Backbones.resnet50 dd inChans
    let cls = torch.nn.Linear(2048L, int64 numClasses, true, dd.Device, Nullable dd.DType)
    let root = new Node("ResNet50", [ "featurizer", node [ "network", node (Backbones.resnetTree r) :> Module ] :> Module; "classifier", cls :> Module ], [])
    ResNetNet(root, r, cls, dropout)

let mnist (dd: Dd) (inChans: int) (numClasses: int) : Network =
    let m = Backbones.mnistCnn dd inChans
    let cls = torch.nn.Linear(128L, int64 numClasses, true, dd.Device, Nullable dd.DType)
    let root = new Node("MNIST_CNN", [ "featurizer", node (Backbones.mnistTree m) :> Module; "classifier", cls :> Module ], [])
    MnistNet(root, m, cls)

/// Forward pass in the network's current mode.
let forward (net: Network) (rng: torch.Generator option) (wantRouting: bool) (x: Tensor) : NetOutput =
    match net with
    | VitNet v ->
        let o = v.Run(x, false, wantRouting, Option.toObj rng)
        o.Features.Dispose()
        { Logits = o.Logits; Aux = o.Aux; Routing = o.Routing }
    | ResNetNet(root, r, cls, p) ->
        use f = Backbones.resnetForward r x
        use fd = dropout { Training = root.training; Rng = rng } p f
        { Logits = cls.forward fd; Aux = torch.zeros([||], dtype = x.dtype, device = x.device); Routing = [] }
    | MnistNet(_, m, cls) ->
        use f = Backbones.mnistForward m x
        { Logits = cls.forward f; Aux = torch.zeros([||], dtype = x.dtype, device = x.device); Routing = [] }

/// Build the network of an architecture on `dd`. ViT weights are drawn from a generator seeded with `seed`; the CNN
/// baselines draw from torch's global generator, seeded with `seed` here. `dropout` is the ResNet's feature dropout.
let build (arch: Architecture) (dd: Dd) (seed: int64) (dropout: float) : Network =
    match arch with
    | VitArch c -> VitNet(new Vit.SfMoeVit(c, dd, Some seed))
    | CnnArch c ->
        torch.manual_seed seed |> ignore
        match c.Kind with
        | ResNet50 -> resnet dd c.InChans c.NumClasses dropout
        | MnistCnn -> mnist dd c.InChans c.NumClasses
