#!/usr/bin/env python3
"""Time one ERM training step of DomainBed's CNN baselines in PyTorch, for comparison with
`sfmoe bench step --model mnist_cnn|resnet50`. Written from DomainBed's published networks.py / algorithms.py
(no code copied):

- mnist_cnn: DomainBed's MNIST_CNN (conv 3x3 64, 3x3/2 128, 3x3 128, 3x3 128, each followed by ReLU then
  GroupNorm(8, C); adaptive average pool to 1x1) + Linear(128, classes); Adam lr 1e-3, no weight decay.
  Default batch 5 x 64 on 1x28x28 (RotatedMNIST: 5 training environments); --dataset ColoredMNIST gives
  2x28x28, 2 classes.
- resnet50: torchvision's resnet50 with fc = Identity, every BatchNorm in eval mode during training (DomainBed's
  freeze_bn), dropout 0, + Linear(2048, classes); Adam lr 5e-5, no weight decay. Default batch 3 x 8 at 224.

ERM step as DomainBed: concatenate the minibatches, cross-entropy, zero_grad, backward, step.

Usage: /usr/bin/python3 bench/domainbed_step.py --model mnist_cnn|resnet50 [--threads 2] [--batch N]
                                                [--dataset RotatedMNIST|ColoredMNIST] [--repeats 5] [--json]
Needs Debian's python3-torch and python3-torchvision.
"""
import argparse, json
import torch
from steptime import median_ms, blas
import torch.nn as nn
import torch.nn.functional as F


class MnistCnn(nn.Module):
    def __init__(self, in_chans):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.bn0 = nn.GroupNorm(8, 64)
        self.bn1 = nn.GroupNorm(8, 128)
        self.bn2 = nn.GroupNorm(8, 128)
        self.bn3 = nn.GroupNorm(8, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        x = self.bn0(F.relu(self.conv1(x)))
        x = self.bn1(F.relu(self.conv2(x)))
        x = self.bn2(F.relu(self.conv3(x)))
        x = self.bn3(F.relu(self.conv4(x)))
        return self.avgpool(x).view(len(x), -1)


class FrozenBnResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        import torchvision
        self.network = torchvision.models.resnet50()
        self.network.fc = nn.Identity()

    def forward(self, x):
        return self.network(x)

    def train(self, mode=True):
        super().train(mode)
        for m in self.network.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def build(a):
    if a.model == "mnist_cnn":
        chans, classes = (2, 2) if a.dataset == "ColoredMNIST" else (1, 10)
        feat, width, lr = MnistCnn(chans), 128, 1e-3
        batch, size = a.batch or 5 * 64, a.img_size or 28
    else:
        chans, classes = 3, a.classes or 7
        feat, width, lr = FrozenBnResNet50(), 2048, 5e-5
        batch, size = a.batch or 3 * 8, a.img_size or 224
    if a.classes:
        classes = a.classes
    net = nn.Sequential(feat, nn.Linear(width, classes))
    return net, lr, batch, chans, size, classes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["mnist_cnn", "resnet50"], default="mnist_cnn")
    ap.add_argument("--dataset", choices=["RotatedMNIST", "ColoredMNIST"], default="RotatedMNIST")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=0, help="images per step (default 320 for mnist_cnn, 24 for resnet50)")
    ap.add_argument("--img-size", type=int, default=0)
    ap.add_argument("--classes", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net, lr, batch, chans, size, classes = build(a)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=0.0)
    x = torch.randn(batch, chans, size, size)
    y = torch.randint(0, classes, (batch,))

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    r = {"step_ms": median_ms(step, a.warmup, a.repeats), "model": a.model, "torch": torch.__version__, "threads": a.threads,
         "batch": batch, "img_size": size, "in_chans": chans,
         "blas": blas()}
    print(json.dumps(r) if a.json else
          f"DomainBed {a.model} ERM step (PyTorch {r['torch']}): {r['step_ms']:.1f} ms median, batch {batch}, "
          f"{chans}x{size}x{size}, {a.threads} threads")


if __name__ == "__main__":
    main()
