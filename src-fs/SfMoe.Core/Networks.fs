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

/// The outputs an update needs: logits, the summed aux loss, routing statistics (on the device) and routing records
/// when asked for.
type NetOutput =
    { Logits: Tensor
      Aux: Tensor
      Routing: (int * Moe.Record) list
      Stats: (int * Moe.Stats) list }

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

/// Forward pass in the network's current mode (the context's Training flag is replaced by it), with the context's
/// random stream, precision and determinism. The CNN baselines compute in float32 whatever the precision.
let run (net: Network) (ctx: Ctx) (wantRouting: bool) (x: Tensor) : NetOutput =
    match net with
    | VitNet v ->
        let o = v.RunWith(ctx, x, false, wantRouting)
        o.Features.Dispose()
        { Logits = o.Logits; Aux = o.Aux; Routing = o.Routing; Stats = o.Stats }
    | ResNetNet(root, r, cls, p) ->
        use f = Backbones.resnetForward r x
        use fd = dropout { ctx with Training = root.training } p f
        { Logits = cls.forward fd; Aux = torch.zeros([||], dtype = x.dtype, device = x.device); Routing = []; Stats = [] }
    | MnistNet(_, m, cls) ->
        use f = Backbones.mnistForward m x
        { Logits = cls.forward f; Aux = torch.zeros([||], dtype = x.dtype, device = x.device); Routing = []; Stats = [] }

/// Forward pass in the network's current mode, in float32, with random choices from `rng` (a CPU generator whose
/// draws are copied to the network's device) or torch's global generator.
let forward (net: Network) (rng: torch.Generator option) (wantRouting: bool) (x: Tensor) : NetOutput =
    run net (match rng with Some g -> Ctx.withRng g Ctx.eval | None -> Ctx.eval) wantRouting x

/// Build the network of an architecture on `dd`, with weights drawn on the CPU so that a seed gives the same initial
/// network on any device. ViT weights are drawn from a generator seeded with `seed`; the CNN baselines (TorchSharp's
/// default initialisers) from torch's global CPU generator, seeded with `seed` here, and are then moved to `dd`.
/// `dropout` is the ResNet's feature dropout.
let build (arch: Architecture) (dd: Dd) (seed: int64) (dropout: float) : Network =
    match arch with
    | VitArch c -> VitNet(new Vit.SfMoeVit(c, dd, Some seed))
    | CnnArch c ->
        torch.manual_seed seed |> ignore
        let host = { dd with Device = torch.CPU }
        let net =
            match c.Kind with
            | ResNet50 -> resnet host c.InChans c.NumClasses dropout
            | MnistCnn -> mnist host c.InChans c.NumClasses
        if dd.Device.``type`` <> DeviceType.CPU then net.Module.``to``(dd.Device) |> ignore
        net
