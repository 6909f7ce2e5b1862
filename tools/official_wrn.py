"""The JEM network in PyTorch, laid out as the official code's ``F`` model with ``norm=None``.

Module names (hence state_dict keys) follow the official checkpoints: ``f.conv1``,
``f.layer{1,2,3}.{b}.conv1|conv2|shortcut.0``, ``f.linear`` (unused by JEM), ``energy_output``
(unused) and ``class_output``. Normalisation layers are identities and have no parameters.
Used by the tests to write small checkpoints in the official format and to compute reference
logits; runs on the CPU.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """Pre-activation wide basic block: conv2(lrelu(conv1(lrelu(x)))) + shortcut(x)."""

    def __init__(self, in_planes, planes, stride, slope):
        super().__init__()
        self.slope = slope
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True))

    def forward(self, x):
        out = self.conv1(F.leaky_relu(x, self.slope))
        out = self.conv2(F.leaky_relu(out, self.slope))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    def __init__(self, depth, width, in_channels, n_classes, slope=0.2):
        super().__init__()
        assert (depth - 4) % 6 == 0, "depth must be 6n + 4"
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.slope = slope
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=True)
        in_planes = widths[0]
        for stage in range(3):
            blocks = []
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(Block(in_planes, widths[stage + 1], stride, slope))
                in_planes = widths[stage + 1]
            setattr(self, "layer%d" % (stage + 1), nn.Sequential(*blocks))
        self.last_dim = widths[3]
        self.linear = nn.Linear(widths[3], n_classes)  # present in official checkpoints, unused

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.leaky_relu(out, self.slope)
        return out.mean(dim=(2, 3))  # global average pool (avg_pool2d(8) on 32x32 inputs)


class JEMModel(nn.Module):
    """The official ``F``: features, an energy head (unused by JEM's objective) and the classifier."""

    def __init__(self, depth, width, in_channels, n_classes, slope=0.2):
        super().__init__()
        self.f = WideResNet(depth, width, in_channels, n_classes, slope)
        self.energy_output = nn.Linear(self.f.last_dim, 1)
        self.class_output = nn.Linear(self.f.last_dim, n_classes)

    def forward(self, x):
        return self.class_output(self.f(x))
