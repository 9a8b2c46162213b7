/// The CNN baselines of DomainBed's ERM: ResNet-50 (torchvision layout and names, BatchNorm frozen as DomainBed's
/// `freeze_bn`, dropout on the pooled features) and MNIST_CNN (DomainBed's hand-tuned MNIST network). Both end in a
/// linear classifier. State-dict names: `featurizer.network.*` (torchvision resnet50 names) or `featurizer.*`
/// (MNIST_CNN names), and `classifier.*`.
module SfMoe.Core.Backbones

open TorchSharp
open TorchSharp.Modules
open SfMoe.Core.Tensors
open SfMoe.Core.Layers

let private conv (dd: Dd) inC outC k stride pad =
    torch.nn.Conv2d(int64 inC, int64 outC, int64 k, int64 stride, int64 pad, 1L, PaddingModes.Zeros, 1L, false, dd.Device, System.Nullable dd.DType)

/// Norm layers are initialised here (weight 1, bias 0): TorchSharp 0.107's GroupNorm built with a device leaves
/// its parameters uninitialised.
let private resetNorm (weight: Tensor) (bias: Tensor) =
    Init.ones weight
    Init.zeros bias

let private bn (dd: Dd) c =
    let n = torch.nn.BatchNorm2d(int64 c, 1e-5, 0.1, true, true, dd.Device, System.Nullable dd.DType)
    resetNorm n.weight n.bias
    n

/// torchvision Bottleneck (expansion 4, stride on the 3x3 conv).
type Bottleneck =
    { Conv1: Conv2d; Bn1: BatchNorm2d; Conv2: Conv2d; Bn2: BatchNorm2d; Conv3: Conv2d; Bn3: BatchNorm2d
      Down: (Conv2d * BatchNorm2d) option }

let private bottleneck (dd: Dd) (inC: int) (mid: int) (stride: int) : Bottleneck =
    let outC = mid * 4
    { Conv1 = conv dd inC mid 1 1 0
      Bn1 = bn dd mid
      Conv2 = conv dd mid mid 3 stride 1
      Bn2 = bn dd mid
      Conv3 = conv dd mid outC 1 1 0
      Bn3 = bn dd outC
      Down = if stride <> 1 || inC <> outC then Some(conv dd inC outC 1 stride 0, bn dd outC) else None }

let private bottleneckTree (b: Bottleneck) : (string * Module) list =
    [ yield "conv1", b.Conv1 :> Module
      yield "bn1", b.Bn1 :> Module
      yield "conv2", b.Conv2 :> Module
      yield "bn2", b.Bn2 :> Module
      yield "conv3", b.Conv3 :> Module
      yield "bn3", b.Bn3 :> Module
      match b.Down with
      | Some(c, n) -> yield "downsample", node [ "0", c :> Module; "1", n :> Module ] :> Module
      | None -> () ]

let private bottleneckForward (b: Bottleneck) (x: Tensor) : Tensor =
    use h1 = b.Conv1.forward x
    use a1 = b.Bn1.forward(h1).relu_()
    use h2 = b.Conv2.forward a1
    use a2 = b.Bn2.forward(h2).relu_()
    use h3 = b.Conv3.forward a2
    use y = b.Bn3.forward h3
    use identity =
        match b.Down with
        | Some(c, n) ->
            use d = c.forward x
            n.forward d
        | None -> x.alias ()
    (add y identity).relu_()

/// ResNet-50 (torchvision) without its fc layer: (B, C, H, W) -> (B, 2048).
type ResNet50 =
    { Conv1: Conv2d; Bn1: BatchNorm2d; Layers: Bottleneck[][] }

let resnet50 (dd: Dd) (inChans: int) : ResNet50 =
    let stages = [| 64, 3, 1; 128, 4, 2; 256, 6, 2; 512, 3, 2 |]
    let mutable inC = 64
    let layers =
        stages
        |> Array.map (fun (mid, n, stride) ->
            Array.init n (fun i ->
                let b = bottleneck dd inC mid (if i = 0 then stride else 1)
                inC <- mid * 4
                b))
    // torchvision init: kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0.
    let r = { Conv1 = conv dd inChans 64 7 2 3; Bn1 = bn dd 64; Layers = layers }
    r

let resnetTree (r: ResNet50) : (string * Module) list =
    [ yield "conv1", r.Conv1 :> Module
      yield "bn1", r.Bn1 :> Module
      for i, layer in Array.indexed r.Layers do
          yield sprintf "layer%d" (i + 1), node [ for j, b in Array.indexed layer -> string j, node (bottleneckTree b) :> Module ] :> Module ]

/// The same (B, C, H, W) tensor stored channels-last (NHWC strides; TorchSharp 0.107 has no memory_format argument).
/// Convolutions, BatchNorm, ReLU and pooling keep the layout, and oneDNN's convolutions run faster on it on the CPU
/// (ResNet-50 at 3 x 8 images, 2 threads: forward ~310 ms vs ~370 ms in calm runs of `sfmoe bench step`).
let channelsLast (x: Tensor) : Tensor =
    use p = x.permute(0L, 2L, 3L, 1L)
    use c = p.contiguous ()
    c.permute(0L, 3L, 1L, 2L)

let resnetForward (r: ResNet50) (x: Tensor) : Tensor =
    use x = channelsLast x
    use h = r.Conv1.forward x
    use a = r.Bn1.forward(h).relu_()
    use p = torch.nn.functional.max_pool2d(a, 3L, 2L, 1L)
    let mutable cur = p.alias ()
    for layer in r.Layers do
        for b in layer do
            let next = bottleneckForward b cur
            cur.Dispose()
            cur <- next
    use last = cur
    use pooled = torch.nn.functional.adaptive_avg_pool2d(last, [| 1L; 1L |])
    pooled.flatten(1L)

/// Every BatchNorm of a ResNet (DomainBed freezes them: always in eval mode).
let resnetNorms (r: ResNet50) : BatchNorm2d list =
    [ yield r.Bn1
      for layer in r.Layers do
          for b in layer do
              yield b.Bn1
              yield b.Bn2
              yield b.Bn3
              match b.Down with
              | Some(_, n) -> yield n
              | None -> () ]

/// DomainBed's MNIST_CNN: four 3x3 convs (64, 128/2, 128, 128) each followed by ReLU and GroupNorm(8), mean pool:
/// (B, C, 28, 28) -> (B, 128).
type MnistCnn =
    { Convs: Conv2d[]; Norms: GroupNorm[] }

let mnistCnn (dd: Dd) (inChans: int) : MnistCnn =
    let c (i: int) o k s p = torch.nn.Conv2d(int64 i, int64 o, int64 k, int64 s, int64 p, 1L, PaddingModes.Zeros, 1L, true, dd.Device, System.Nullable dd.DType)
    let gn ch =
        let n = torch.nn.GroupNorm(8L, int64 ch, 1e-5, true, dd.Device, System.Nullable dd.DType)
        resetNorm n.weight n.bias
        n
    { Convs = [| c inChans 64 3 1 1; c 64 128 3 2 1; c 128 128 3 1 1; c 128 128 3 1 1 |]
      Norms = [| gn 64; gn 128; gn 128; gn 128 |] }

let mnistTree (m: MnistCnn) : (string * Module) list =
    [ for i, c in Array.indexed m.Convs -> sprintf "conv%d" (i + 1), c :> Module ]
    @ [ for i, n in Array.indexed m.Norms -> sprintf "bn%d" i, n :> Module ]

let mnistForward (m: MnistCnn) (x: Tensor) : Tensor =
    // NCHW: channels-last measured no faster here (its GroupNorms), so the input's layout is kept.
    let mutable cur = x.alias ()
    for i in 0 .. m.Convs.Length - 1 do
        use h = m.Convs[i].forward cur
        use a = h.relu ()
        let next = m.Norms[i].forward a
        cur.Dispose()
        cur <- next
    use last = cur
    last.mean([| 2L; 3L |]) // (B, 128)
