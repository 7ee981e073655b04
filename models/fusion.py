"""Fusion heads: ``forward(feat_v, feat_a, fmap_v) -> logits [B, num_classes]``.

Every head takes ``(dim_v, dim_a, num_classes, **head_kwargs)`` and declares which modalities it
reads (``modalities``) and whether it needs the visual feature map (``needs_fmap``). Inputs of a
modality a head does not use may be None.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import FUSION_HEADS

AUDIO = frozenset({"audio"})
VISUAL = frozenset({"visual"})
AUDIO_VISUAL = frozenset({"audio", "visual"})


class FusionHead(nn.Module):
    modalities: ClassVar[frozenset[str]] = AUDIO_VISUAL
    needs_fmap: ClassVar[bool] = False

    def __init__(self, dim_v: int, dim_a: int, num_classes: int) -> None:
        super().__init__()
        self.dim_v = dim_v
        self.dim_a = dim_a
        self.num_classes = num_classes


@FUSION_HEADS.register("audio")
class AudioHead(FusionHead):
    """Audio-only linear classifier."""

    modalities = AUDIO

    def __init__(self, dim_v: int, dim_a: int, num_classes: int) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        self.fc = nn.Linear(dim_a, num_classes)

    def forward(self, feat_v: Tensor | None, feat_a: Tensor, fmap_v: Tensor | None) -> Tensor:
        return self.fc(feat_a)


@FUSION_HEADS.register("visual")
class VisualHead(FusionHead):
    """Visual-only linear classifier."""

    modalities = VISUAL

    def __init__(self, dim_v: int, dim_a: int, num_classes: int) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        self.fc = nn.Linear(dim_v, num_classes)

    def forward(self, feat_v: Tensor, feat_a: Tensor | None, fmap_v: Tensor | None) -> Tensor:
        return self.fc(feat_v)


@FUSION_HEADS.register("concat")
class ConcatHead(FusionHead):
    """The paper's head: ``Linear(dim_v + dim_a, num_classes)`` on the concatenated embeddings."""

    def __init__(self, dim_v: int, dim_a: int, num_classes: int) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        self.fc = nn.Linear(dim_v + dim_a, num_classes)

    def forward(self, feat_v: Tensor, feat_a: Tensor, fmap_v: Tensor | None) -> Tensor:
        return self.fc(torch.cat([feat_v, feat_a], dim=1))


@FUSION_HEADS.register("sum")
class SumHead(FusionHead):
    """Adds the embeddings (audio linearly mapped to ``dim_v`` when widths differ), one shared classifier."""

    def __init__(self, dim_v: int, dim_a: int, num_classes: int) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        self.proj_a = nn.Identity() if dim_a == dim_v else nn.Linear(dim_a, dim_v)
        self.fc = nn.Linear(dim_v, num_classes)

    def forward(self, feat_v: Tensor, feat_a: Tensor, fmap_v: Tensor | None) -> Tensor:
        return self.fc(feat_v + self.proj_a(feat_a))


@FUSION_HEADS.register("late")
class LateHead(FusionHead):
    """Late fusion: the mean of an audio-only and a visual-only linear classifier's logits."""

    def __init__(self, dim_v: int, dim_a: int, num_classes: int) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        self.fc_v = nn.Linear(dim_v, num_classes)
        self.fc_a = nn.Linear(dim_a, num_classes)

    def forward(self, feat_v: Tensor, feat_a: Tensor, fmap_v: Tensor | None) -> Tensor:
        return 0.5 * (self.fc_v(feat_v) + self.fc_a(feat_a))


@FUSION_HEADS.register("film")
class FiLMHead(FusionHead):
    """Audio conditions vision: ``(1 + gamma(a)) * v + beta(a)``, then a linear classifier."""

    def __init__(self, dim_v: int, dim_a: int, num_classes: int) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        self.film = nn.Linear(dim_a, 2 * dim_v)
        self.fc = nn.Linear(dim_v, num_classes)

    def forward(self, feat_v: Tensor, feat_a: Tensor, fmap_v: Tensor | None) -> Tensor:
        gamma, beta = self.film(feat_a).chunk(2, dim=1)
        return self.fc((1 + gamma) * feat_v + beta)


@FUSION_HEADS.register("gated")
class GatedHead(FusionHead):
    """Per-channel sigmoid gates for each modality, computed from both embeddings, then concat + linear."""

    def __init__(self, dim_v: int, dim_a: int, num_classes: int) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        self.gate = nn.Linear(dim_v + dim_a, dim_v + dim_a)
        self.fc = nn.Linear(dim_v + dim_a, num_classes)

    def forward(self, feat_v: Tensor, feat_a: Tensor, fmap_v: Tensor | None) -> Tensor:
        joint = torch.cat([feat_v, feat_a], dim=1)
        return self.fc(torch.sigmoid(self.gate(joint)) * joint)


@FUSION_HEADS.register("bilinear")
class BilinearHead(FusionHead):
    """Low-rank bilinear pooling: ``fc((U v) * (W a))`` with ``rank`` factors."""

    def __init__(self, dim_v: int, dim_a: int, num_classes: int, rank: int = 256) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        self.proj_v = nn.Linear(dim_v, rank)
        self.proj_a = nn.Linear(dim_a, rank)
        self.fc = nn.Linear(rank, num_classes)

    def forward(self, feat_v: Tensor, feat_a: Tensor, fmap_v: Tensor | None) -> Tensor:
        return self.fc(self.proj_v(feat_v) * self.proj_a(feat_a))


@FUSION_HEADS.register("attention")
class AttentionHead(FusionHead):
    """The audio embedding attends over the visual feature map's locations.

    Attention is a softmax over h*w of the cosine similarity between the projected audio embedding
    and each location, scaled by a learnable temperature. The attended visual feature is
    concatenated with ``feat_a`` and classified linearly. The last forward's map ``[B, h, w]``
    (detached) is kept in ``last_map``; ``attention(feat_a, fmap_v)`` gives a differentiable one.
    """

    needs_fmap = True

    def __init__(self, dim_v: int, dim_a: int, num_classes: int, init_scale: float = 10.0) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        self.query = nn.Linear(dim_a, dim_v)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.fc = nn.Linear(dim_v + dim_a, num_classes)
        self.last_map: Tensor | None = None

    def attention(self, feat_a: Tensor, fmap_v: Tensor) -> Tensor:
        """Attention map ``[B, h, w]`` over ``fmap_v [B, D, h, w]``; sums to 1 over h*w."""
        b, _, h, w = fmap_v.shape
        keys = F.normalize(fmap_v.flatten(2), dim=1)
        query = F.normalize(self.query(feat_a), dim=1)
        sim = torch.einsum("bd,bdn->bn", query, keys)
        return torch.softmax(sim * self.log_scale.exp(), dim=1).reshape(b, h, w)

    def forward(self, feat_v: Tensor | None, feat_a: Tensor, fmap_v: Tensor) -> Tensor:
        attn = self.attention(feat_a, fmap_v)
        self.last_map = attn.detach()
        attended = torch.einsum("bn,bdn->bd", attn.flatten(1), fmap_v.flatten(2))
        return self.fc(torch.cat([attended, feat_a], dim=1))


MAP_ACTIVATIONS = ("softmax", "sigmoid")


@FUSION_HEADS.register("loc")
class LocalizationHead(AttentionHead):
    """Weakly supervised sound-source localization, trained with class labels only.

    The map scores every location of ``fmap_v [B, D, h, w]`` by the cosine similarity between it and
    the projected audio embedding, times a learnable temperature, then applies ``map_activation``:

    * ``softmax`` over the h*w locations (the ``attention`` head's map): it sums to 1 over h*w;
    * ``sigmoid`` per location, with a learnable bias: every value is in [0, 1] on its own, so
      several locations (or none) can sound.

    The attended visual feature is the map-weighted mean of the locations; it is concatenated with
    ``feat_a`` and classified linearly. ``attention(feat_a, fmap_v)`` returns the differentiable map
    ``[B, h, w]`` (the grid of ``fmap_v``, so it has the frame's aspect); ``last_map`` holds the last
    forward's map, detached.
    """

    def __init__(self, dim_v: int, dim_a: int, num_classes: int, init_scale: float = 10.0,
                 map_activation: str = "softmax") -> None:
        if map_activation not in MAP_ACTIVATIONS:
            raise ValueError(f"map_activation must be one of {MAP_ACTIVATIONS}, got '{map_activation}'")
        super().__init__(dim_v, dim_a, num_classes, init_scale)
        self.map_activation = map_activation
        # only the sigmoid map has a bias: a parameter that gets no gradient would break DDP
        self.map_bias = nn.Parameter(torch.zeros(())) if map_activation == "sigmoid" else None

    def attention(self, feat_a: Tensor, fmap_v: Tensor) -> Tensor:
        """Localization map ``[B, h, w]``: softmax over h*w (sums to 1) or per-location sigmoid (in [0, 1])."""
        b, _, h, w = fmap_v.shape
        keys = F.normalize(fmap_v.flatten(2), dim=1)
        query = F.normalize(self.query(feat_a), dim=1)
        logits = torch.einsum("bd,bdn->bn", query, keys) * self.log_scale.exp()
        if self.map_bias is None:
            return torch.softmax(logits, dim=1).reshape(b, h, w)
        return torch.sigmoid(logits + self.map_bias).reshape(b, h, w)

    def forward(self, feat_v: Tensor | None, feat_a: Tensor, fmap_v: Tensor) -> Tensor:
        loc = self.attention(feat_a, fmap_v)
        self.last_map = loc.detach()
        weights = loc.flatten(1)
        if self.map_bias is not None:
            weights = weights / (weights.sum(dim=1, keepdim=True) + 1e-6)
        attended = torch.einsum("bn,bdn->bd", weights, fmap_v.flatten(2))
        return self.fc(torch.cat([attended, feat_a], dim=1))
