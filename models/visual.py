"""Frame encoders: ``[B, 3, T, H, W]`` pixels in [0, 1] -> ``(feat_v [B, D], fmap_v [B, D, h, w])``.

ImageNet mean/std normalisation is a (non-persistent) buffer applied inside ``forward`` so that
attacks can work on raw pixels and gradients reach them.
"""
from __future__ import annotations

import os
from itertools import pairwise

import torch
from torch import Tensor, nn

from models.registry import FRAME_NETS
from utils.fileio import non_finite_entries

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_POOLS = ("max", "avg")


class FrameEncoder(nn.Module):
    """Normalises, folds time into the batch, runs ``features`` and pools.

    Subclasses set ``out_dim`` and implement ``features(x [N, 3, H, W]) -> [N, D, h, w]`` on
    normalised images.
    """

    out_dim: int

    def __init__(self, img_pool: str = "max") -> None:
        super().__init__()
        if img_pool not in IMG_POOLS:
            raise ValueError(f"img_pool must be one of {IMG_POOLS}, got '{img_pool}'")
        self.img_pool = img_pool
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def channels_last_weights(self) -> bool:
        """Whether the first convolution's weight is channels-last (``model.to(memory_format=channels_last)``,
        done on CUDA), checked on the first 4-D parameter."""
        first = next((p for p in self.parameters() if p.dim() == 4), None)
        return first is not None and first.is_contiguous(memory_format=torch.channels_last)

    def normalize(self, x: Tensor) -> Tensor:
        """ImageNet-normalise ``[N, 3, H, W]`` images in [0, 1]."""
        return (x - self.mean) / self.std

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """``frames [B, 3, T, H, W]`` in [0, 1] -> ``(feat_v [B, D], fmap_v [B, D, h, w])``.

        The feature map is averaged over time; the feature vector is pooled spatially per frame
        (``img_pool``) and then averaged over time.
        """
        if frames.dim() != 5 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [B, 3, T, H, W], got {tuple(frames.shape)}")
        b, c, t, h, w = frames.shape
        x = frames.transpose(1, 2).reshape(b * t, c, h, w)
        if self.channels_last_weights():  # else every convolution converts its input itself
            x = x.contiguous(memory_format=torch.channels_last)
        fmap = self.features(self.normalize(x))
        fmap = fmap.reshape(b, t, *fmap.shape[1:])
        if self.img_pool == "max":
            feat = fmap.amax(dim=(-2, -1))
        else:
            feat = fmap.mean(dim=(-2, -1))
        return feat.mean(dim=1), fmap.mean(dim=1)


PADDINGS = ("zeros", "reflect")


def _check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return padding


def _conv_bn_relu(c_in: int, c_out: int, stride: int, padding: str = "zeros") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, padding_mode=padding),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


@FRAME_NETS.register("resnet18")
class ResNet18Frame(FrameEncoder):
    """torchvision ResNet-18 up to ``layer4`` (512-d, stride 32), as in the paper.

    Parameter names match torchvision's ``resnet18`` without ``fc``, so its state dicts load as-is.
    ``weights``: None (random init), ``'imagenet'`` (torchvision's IMAGENET1K_V1, downloaded into
    the torch hub cache) or a path to a saved ResNet-18 state dict.
    """

    out_dim = 512

    def __init__(self, img_pool: str = "max", weights: str | os.PathLike | None = None) -> None:
        super().__init__(img_pool)
        from torchvision.models import resnet18  # imported here: torchvision's models take ~1.5 s to import

        trunk = resnet18(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(trunk, name))
        if weights is not None:
            self.load_trunk(load_resnet18_state_dict(weights))

    def features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def load_trunk(self, state_dict: dict[str, Tensor]) -> None:
        """Load a ResNet-18 state dict (``fc.*`` and a ``module.`` prefix are dropped), strictly."""
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        self.load_state_dict(state_dict, strict=True)


def load_resnet18_state_dict(weights: str | os.PathLike) -> dict[str, Tensor]:
    """State dict for ``weights='imagenet'`` (hub download/cache) or a checkpoint path."""
    if weights == "imagenet":
        from torchvision.models import ResNet18_Weights

        spec = ResNet18_Weights.IMAGENET1K_V1
        cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
        try:
            return spec.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as err:
            raise RuntimeError(
                f"Could not download the ImageNet ResNet-18 weights from {spec.url} into {cache_dir} "
                f"({type(err).__name__}: {err}). Without internet access, fetch that file elsewhere and "
                f"place it in {cache_dir}, or pass a local checkpoint path instead of 'imagenet' "
                "(weights_frame=/path/to/resnet18.pth, a torchvision resnet18 state dict)."
            ) from err
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{weights} does not hold a state dict (got {type(state).__name__})")
    bad = non_finite_entries(state)
    if bad:
        raise ValueError(f"{weights}: non-finite values (NaN or inf) in {', '.join(bad[:3])}; the weights are refused")
    return state


@FRAME_NETS.register("smallcnn")
class SmallCNNFrame(FrameEncoder):
    """Four conv-BN-ReLU blocks of stride 2 (32-64-128-``dim`` channels): a fast CPU stand-in.

    ``padding``: the convolutions' border, ``zeros`` or ``reflect``. Zero padding marks every border location in
    every frame the same way, a feature that a self-supervised localizer can lock onto (its map then peaks on a
    frame edge whatever the frame shows); reflection padding leaves no such mark."""

    def __init__(self, img_pool: str = "max", dim: int = 128, padding: str = "zeros") -> None:
        super().__init__(img_pool)
        self.out_dim = dim
        widths = (3, 32, 64, 128, dim)
        padding = _check_padding(padding)
        self.body = nn.Sequential(*(_conv_bn_relu(c_in, c_out, 2, padding) for c_in, c_out in pairwise(widths)))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)


@FRAME_NETS.register("poolcnn")
class PoolCNNFrame(FrameEncoder):
    """A CPU encoder whose receptive field covers typical objects: a stride-2 conv stem, then four
    conv-BN-ReLU blocks with 2x2 max-pools between them (32-32-64-128-``dim`` channels).

    Total stride 16 like ``smallcnn`` (a 7x7 map at 112 px), but a 77-px receptive field instead of 31 px,
    at about 1.7x its multiply-adds and half those of the plain 4-block reference CNN at full resolution.
    """

    def __init__(self, img_pool: str = "max", dim: int = 128, padding: str = "zeros") -> None:
        super().__init__(img_pool)
        self.out_dim = dim
        padding = _check_padding(padding)
        blocks: list[nn.Module] = [_conv_bn_relu(3, 32, 2, padding)]
        for i, (c_in, c_out) in enumerate(pairwise((32, 32, 64, 128, dim))):
            if i > 0:
                blocks.append(nn.MaxPool2d(2))
            blocks.append(_conv_bn_relu(c_in, c_out, 1, padding))
        self.body = nn.Sequential(*blocks)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)


def _pair_first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else value


def receptive_field(module: nn.Module) -> int:
    """Receptive field in input pixels of a plain chain of layers (no branches): walks the convolutions and
    pools in module order, r += (kernel - 1) * dilation * jump, jump *= stride (first spatial axis)."""
    field, jump = 1, 1
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel, stride = _pair_first(layer.kernel_size), _pair_first(layer.stride)
            dilation = _pair_first(getattr(layer, "dilation", 1))
            field += (kernel - 1) * dilation * jump
            jump *= stride
    return field
