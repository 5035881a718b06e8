"""Masked ResNets for the GG experiments: GEMResNet18 (SplitCIFAR100) and ResNet-50 (SplitImageNet).

Every convolution and the 1x1 head are bias-free and masked; BatchNorm is non-affine (no scale,
no bias, nothing learned) and its running statistics are *per task*: they live in the
``batch_stats`` pytree that the caller stacks on the task axis (SPEC 1.3, the official repo's
final ``MultitaskNonAffineBN``; shared statistics gave chance accuracy on old tasks, issues #11
and #15). BN momentum 0.1 and eps 1e-5 as PyTorch; Flax normalises with, and tracks, the biased
batch variance (PyTorch tracks the unbiased one), a difference of ``n/(n-1)`` in the running var.
Padding is explicit and symmetric, as PyTorch's, so strided convolutions see the same windows.
"""

from __future__ import annotations

import jax
from flax import nnx

from supsup_jax import init as init_lib
from supsup_jax.models.network import Network, from_nnx

__all__ = ["GEMResNet18", "ResNet50", "gemresnet18", "resnet50"]


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, use_bias=False, use_scale=False, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _conv(cin, cout, k, stride, kernel_init, rngs):
    pad = (k - 1) // 2
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)),
                    use_bias=False, kernel_init=kernel_init, rngs=rngs)


class BasicBlock(nnx.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))`` (GEM's reduced ResNet-18)."""

    def __init__(self, cin, cout, stride, kernel_init, rngs):
        self.conv1 = _conv(cin, cout, 3, stride, kernel_init, rngs)
        self.bn1 = _bn(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, 1, kernel_init, rngs)
        self.bn2 = _bn(cout, rngs)
        if stride != 1 or cin != cout:
            self.shortcut_conv = _conv(cin, cout, 1, stride, kernel_init, rngs)
            self.shortcut_bn = _bn(cout, rngs)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    def __call__(self, x, train):
        ura = not train
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        out = self.bn2(self.conv2(out), use_running_average=ura)
        if self.shortcut_conv is not None:
            x = self.shortcut_bn(self.shortcut_conv(x), use_running_average=ura)
        return jax.nn.relu(out + x)


class GEMResNet18(nnx.Module):
    """Reduced ResNet-18 of GEM: nf=20 gives 20/40/80/160 channels, 2 BasicBlocks per stage,
    4x4 average pool and a masked 1x1 head (SPEC 2.2). Input ``(B, 32, 32, 3)``.

    With nf=20 and a 5-way head it has 1,090,940 masked weights in 21 layers (SPEC 1.2).
    """

    def __init__(self, num_classes: int, nf: int = 20, *, kernel_init=None, rngs: nnx.Rngs):
        kernel_init = kernel_init or init_lib.signed_kaiming_constant()
        self.conv1 = _conv(3, nf, 3, 1, kernel_init, rngs)
        self.bn1 = _bn(nf, rngs)
        blocks = []
        cin = nf
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            for s in (stride, 1):
                blocks.append(BasicBlock(cin, nf * mult, s, kernel_init, rngs))
                cin = nf * mult
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, num_classes, use_bias=False, kernel_init=kernel_init, rngs=rngs)

    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        for block in self.blocks:
            x = block(x, train)
        # 4x4 average pooling, stride 4 (written out: flax's avg_pool breaks strict promotion).
        b, h, w, c = x.shape
        x = x.reshape(b, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4))
        return self.head(x.reshape(x.shape[0], -1))


class Bottleneck(nnx.Module):
    """ResNet-50 bottleneck (torchvision v1.5: the stride is on the 3x3 convolution)."""

    def __init__(self, cin, planes, stride, kernel_init, rngs):
        cout = planes * 4
        self.conv1 = _conv(cin, planes, 1, 1, kernel_init, rngs)
        self.bn1 = _bn(planes, rngs)
        self.conv2 = _conv(planes, planes, 3, stride, kernel_init, rngs)
        self.bn2 = _bn(planes, rngs)
        self.conv3 = _conv(planes, cout, 1, 1, kernel_init, rngs)
        self.bn3 = _bn(cout, rngs)
        if stride != 1 or cin != cout:
            self.down_conv = _conv(cin, cout, 1, stride, kernel_init, rngs)
            self.down_bn = _bn(cout, rngs)
        else:
            self.down_conv = None
            self.down_bn = None

    def __call__(self, x, train):
        ura = not train
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        out = jax.nn.relu(self.bn2(self.conv2(out), use_running_average=ura))
        out = self.bn3(self.conv3(out), use_running_average=ura)
        if self.down_conv is not None:
            x = self.down_bn(self.down_conv(x), use_running_average=ura)
        return jax.nn.relu(out + x)


class ResNet50(nnx.Module):
    """ResNet-50 with non-affine per-task BN and a masked 1x1 head (SplitImageNet, SPEC 2.2).

    ``width`` scales every channel count (the official ``--width-mult``). Input ``(B, H, W, 3)``.
    """

    def __init__(self, num_classes: int, width: float = 1.0, *, kernel_init=None,
                 rngs: nnx.Rngs):
        kernel_init = kernel_init or init_lib.signed_kaiming_constant()
        c = int(64 * width)
        self.stem = _conv(3, c, 7, 2, kernel_init, rngs)
        self.stem_bn = _bn(c, rngs)
        blocks = []
        cin = c
        for i, (n, stride) in enumerate(((3, 1), (4, 2), (6, 2), (3, 2))):
            planes = int(64 * width) * 2**i
            for j in range(n):
                blocks.append(Bottleneck(cin, planes, stride if j == 0 else 1, kernel_init, rngs))
                cin = planes * 4
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, num_classes, use_bias=False, kernel_init=kernel_init, rngs=rngs)

    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.stem_bn(self.stem(x), use_running_average=not train))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x, train)
        return self.head(x.mean(axis=(1, 2)))


def gemresnet18(num_classes: int = 5, seed: int = 0, nf: int = 20, input_shape=(32, 32, 3),
                weight_init: str = "signed_constant") -> Network:
    """GEMResNet18 as a :class:`Network` (frozen signed-constant weights from ``seed``)."""
    module = GEMResNet18(num_classes, nf, kernel_init=init_lib.weight_init(weight_init),
                         rngs=nnx.Rngs(seed))
    return from_nnx(module, input_shape)


def resnet50(num_classes: int = 10, seed: int = 0, width: float = 1.0, input_shape=(224, 224, 3),
             weight_init: str = "signed_constant") -> Network:
    """ResNet-50 as a :class:`Network` (frozen signed-constant weights from ``seed``)."""
    module = ResNet50(num_classes, width, kernel_init=init_lib.weight_init(weight_init),
                      rngs=nnx.Rngs(seed))
    return from_nnx(module, input_shape)
