"""A torchvision-style ResNet in PyTorch and its hand-written linen port.

The reference keeps torchvision's names (``layer1.0.conv1``, ``bn1``,
``downsample.0``); the port is written as people write linen: ``@nn.compact``
auto names (``Conv_0``, ``BatchNorm_1``), NHWC, running statistics in the
``batch_stats`` collection. Blocks cover plain, grouped (ResNeXt) and
depthwise convolutions, a strided 1x1 shortcut and max/average pooling.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import torch

# (planes, stride, groups) per block; groups == planes is a depthwise convolution.
BLOCKS = [(8, 1, 1), (16, 2, 4), (16, 1, 16), (32, 2, 1)]


class TorchBlock(torch.nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.relu = torch.nn.ReLU()
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(inplanes, planes, 1, stride, bias=False), torch.nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TorchResNet(torch.nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], 8
        for planes, stride, groups in BLOCKS:
            layers.append(TorchBlock(inplanes, planes, stride, groups))
            inplanes = planes
        self.layer1 = torch.nn.Sequential(*layers[:2])
        self.layer2 = torch.nn.Sequential(*layers[2:])
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class LinenBlock(nn.Module):
    planes: int
    stride: int
    groups: int
    shortcut: bool

    @nn.compact
    def __call__(self, x):
        norm = lambda: nn.BatchNorm(use_running_average=True, epsilon=1e-5)  # noqa: E731
        out = nn.relu(norm()(nn.Conv(self.planes, (1, 1), use_bias=False)(x)))
        s = (self.stride, self.stride)
        out = nn.Conv(self.planes, (3, 3), s, padding=1, feature_group_count=self.groups, use_bias=False)(out)
        out = norm()(out)
        if self.shortcut:
            x = norm()(nn.Conv(self.planes, (1, 1), s, use_bias=False)(x))
        return nn.relu(out + x)


class LinenResNet(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):  # x: (B, H, W, 3)
        x = nn.Conv(8, (7, 7), (2, 2), padding=3, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-5)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        inplanes = 8
        for planes, stride, groups in BLOCKS:
            x = LinenBlock(planes, stride, groups, stride != 1 or inplanes != planes)(x)
            inplanes = planes
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


def _conv(m: torch.nn.Conv2d) -> dict:
    return {"kernel": _np(m.weight).transpose(2, 3, 1, 0)}


def _bn(m: torch.nn.BatchNorm2d) -> tuple[dict, dict]:
    return {"scale": _np(m.weight), "bias": _np(m.bias)}, {"mean": _np(m.running_mean), "var": _np(m.running_var)}


def _block_vars(b: TorchBlock) -> tuple[dict, dict]:
    convs = [b.conv1, b.conv2] + ([b.downsample[0]] if b.downsample is not None else [])
    norms = [b.bn1, b.bn2] + ([b.downsample[1]] if b.downsample is not None else [])
    params = {f"Conv_{i}": _conv(c) for i, c in enumerate(convs)}
    stats = {}
    for i, n in enumerate(norms):
        params[f"BatchNorm_{i}"], stats[f"BatchNorm_{i}"] = _bn(n)
    return params, stats


def linen_variables(pt: TorchResNet) -> dict:
    """The port's variables, loaded from the reference (OIHW -> HWIO, running stats -> batch_stats)."""
    params = {"Conv_0": _conv(pt.conv1), "Dense_0": {"kernel": _np(pt.fc.weight).T.copy(), "bias": _np(pt.fc.bias)}}
    bn_p, bn_s = _bn(pt.bn1)
    params["BatchNorm_0"], stats = bn_p, {"BatchNorm_0": bn_s}
    for i, b in enumerate([*pt.layer1, *pt.layer2]):
        params[f"LinenBlock_{i}"], stats[f"LinenBlock_{i}"] = _block_vars(b)
    return {"params": params, "batch_stats": stats}


def randomize_(pt: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Trained-looking values: random weights, norm scales near 1, running statistics not 0/1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pt.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if name.endswith("bn1.weight") else 0.0))
        for name, b in pt.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return pt.eval()


def resnet_pair(seed: int = 0, flip_block: int | None = None):
    """(torch ResNet, (linen ResNet, variables), NCHW input, NHWC input).

    ``flip_block``: that block's 3x3 convolution kernel is flipped spatially in the port.
    """
    torch.manual_seed(seed)
    pt = randomize_(TorchResNet(), seed)
    variables = linen_variables(pt)
    if flip_block is not None:
        conv = variables["params"][f"LinenBlock_{flip_block}"]["Conv_1"]
        conv["kernel"] = conv["kernel"][::-1, ::-1].copy()
    x = np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype(np.float32)
    return pt, (LinenResNet(), variables), x, np.ascontiguousarray(x.transpose(0, 2, 3, 1))
