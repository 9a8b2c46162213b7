/// DomainBed's CNN baselines in eval mode as ONNX graphs (Backbones.fs, Networks.fs): ResNet-50 with its BatchNorms on
/// running statistics and the feature dropout off, and MNIST_CNN (convolutions, ReLU, GroupNorm, mean pool), each
/// followed by its linear classifier.
module SfMoe.Core.Onnx.CnnGraph

open SfMoe.Core
open SfMoe.Core.Onnx.Proto
open SfMoe.Core.Onnx.Graph
open SfMoe.Core.Onnx.Layers

let private bottleneck (g: Graph) (key: string) (b: Backbones.Bottleneck) (x: string) : string =
    g.Within(key, fun () ->
        let a1 = g.Relu(batchNorm g (key + ".bn1") b.Bn1 (conv g (key + ".conv1") b.Conv1 x))
        let a2 = g.Relu(batchNorm g (key + ".bn2") b.Bn2 (conv g (key + ".conv2") b.Conv2 a1))
        let y = batchNorm g (key + ".bn3") b.Bn3 (conv g (key + ".conv3") b.Conv3 a2)
        let identity =
            match b.Down with
            | Some(c, n) -> batchNorm g (key + ".downsample.1") n (conv g (key + ".downsample.0") c x)
            | None -> x
        g.Relu(g.Add(y, identity)))

/// ResNet-50 features (B, 2048) of images (B, C, H, W); keys are the model file's (featurizer.network.*).
let resnet50 (g: Graph) (r: Backbones.ResNet50) (images: string) : string =
    let key = "featurizer.network"
    let stem = g.Relu(batchNorm g (key + ".bn1") r.Bn1 (conv g (key + ".conv1") r.Conv1 images))
    let pooled = g.Node("MaxPool", [ stem ], [ "kernel_shape", AInts [ 3L; 3L ]; "strides", AInts [ 2L; 2L ]; "pads", AInts [ 1L; 1L; 1L; 1L ] ], "stem_pool")
    let mutable x = pooled
    for i, layer in Array.indexed r.Layers do
        for j, b in Array.indexed layer do
            x <- bottleneck g (sprintf "%s.layer%d.%d" key (i + 1) j) b x
    g.Node("Flatten", [ g.Node("GlobalAveragePool", [ x ]) ], [ "axis", AInt 1L ], "features")

/// MNIST_CNN features (B, 128) of images (B, C, H, W); keys are the model file's (featurizer.*).
let mnistCnn (g: Graph) (m: Backbones.MnistCnn) (images: string) : string =
    let mutable x = images
    for i in 0 .. m.Convs.Length - 1 do
        let h = g.Relu(conv g (sprintf "featurizer.conv%d" (i + 1)) m.Convs[i] x)
        x <- groupNorm g (sprintf "featurizer.bn%d" i) m.Norms[i] h
    g.Reduce("ReduceMean", x, [ 2L; 3L ], false, "features")

/// The network's logits (B, K).
let forward (g: Graph) (net: Networks.Network) (images: string) : string =
    match net with
    | Networks.ResNetNet(_, r, cls, _) -> linear g "classifier" cls (resnet50 g r images)
    | Networks.MnistNet(_, m, cls) -> linear g "classifier" cls (mnistCnn g m images)
    | Networks.VitNet _ -> invalidArg "net" "a ViT is exported by VitGraph"
