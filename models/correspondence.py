"""A self-supervised sound-source localizer: audio-visual correspondence without class labels.

The head projects every location of the visual feature map ``fmap_v [B, D, h, w]`` and the audio embedding
``feat_a`` into a shared space (``embed_dim``, L2-normalised); the cosine similarity of the audio embedding
with each location is the localization map's score. It is trained by a contrastive objective over the batch
(``training.objectives.Correspondence``; the paired clip is the positive, the other clips of the batch are the
negatives):

* ``ssl``: EZ-VSL (Mo & Morgado, ECCV 2022), multiple-instance contrastive learning: the positive score of an
  (audio, image) pair is the maximum over the image's locations of their similarity, InfoNCE in both
  directions (audio to images, image to audios);
* ``ssl_lvs``: LVS (Chen et al., CVPR 2021): the paired image's locations above a similarity threshold are the
  positive, those below a lower one hard negatives inside the image; the other images are easy negatives.

The two differ only in that objective (a head attribute, ``ssl_loss``), so they are two registered names: each
gets its own run folder and checkpoint check.

Logits, so that the class attacks, the training loop's accuracy and the defense keep working, come from a
linear probe on the concatenated pooled embeddings ``[feat_v, feat_a]``. The objective trains the probe with
the labels on *detached* embeddings (stop-gradient: the standard linear-evaluation protocol of self-supervised
learning), so labels never reach the encoders or the projections; at attack time the logits are an ordinary
differentiable function of the inputs.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.fusion import FusionHead
from models.registry import FUSION_HEADS

SSL_LOSSES = ("ezvsl", "lvs")


@FUSION_HEADS.register("ssl")
class CorrespondenceHead(FusionHead):
    """Audio-visual correspondence head (see the module docstring); ``ssl_loss`` picks its training objective.

    ``attention(feat_a, fmap_v)`` is the localization map ``[B, h, w]``: the softmax over the h*w locations of
    the similarity divided by ``temperature``, the distribution the contrastive objective sharpens. It ranks the
    locations as the similarity does, so the pointing game and cIoU equal those of the raw similarity map, and
    it is non-negative and sums to 1 like the ``loc`` head's, so the map attack's mass objective applies.
    """

    needs_fmap: ClassVar[bool] = True
    self_supervised: ClassVar[bool] = True
    ssl_loss: ClassVar[str] = "ezvsl"

    def __init__(self, dim_v: int, dim_a: int, num_classes: int, embed_dim: int = 128,
                 temperature: float = 0.07) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.proj_v = nn.Conv2d(dim_v, embed_dim, kernel_size=1)
        self.proj_a = nn.Linear(dim_a, embed_dim)
        self.probe = nn.Linear(dim_v + dim_a, num_classes)
        self.temperature = temperature
        self.last_map: Tensor | None = None

    def embed_visual(self, fmap_v: Tensor) -> Tensor:
        """``[B, E, h*w]``: every location projected and L2-normalised."""
        return F.normalize(self.proj_v(fmap_v).flatten(2), dim=1)

    def embed_audio(self, feat_a: Tensor) -> Tensor:
        """``[B, E]``: the projected, L2-normalised audio embedding."""
        return F.normalize(self.proj_a(feat_a), dim=1)

    def similarity(self, feat_a: Tensor, fmap_v: Tensor) -> Tensor:
        """Cosine similarity ``[B, h, w]`` of each clip's audio with each location of its own frame."""
        b, _, h, w = fmap_v.shape
        return torch.einsum("be,ben->bn", self.embed_audio(feat_a), self.embed_visual(fmap_v)).reshape(b, h, w)

    def cross_similarity(self, feat_a: Tensor, fmap_v: Tensor) -> Tensor:
        """``[B_audio, B_image, h*w]``: the similarity of every clip's audio with every frame's locations."""
        return torch.einsum("ie,jen->ijn", self.embed_audio(feat_a), self.embed_visual(fmap_v))

    def attention(self, feat_a: Tensor, fmap_v: Tensor) -> Tensor:
        """Localization map ``[B, h, w]``: softmax over h*w of similarity / temperature (differentiable)."""
        sim = self.similarity(feat_a, fmap_v)
        return torch.softmax(sim.flatten(1) / self.temperature, dim=1).view_as(sim)

    def probe_logits(self, feat_v: Tensor, feat_a: Tensor) -> Tensor:
        """The linear probe's class logits on the pooled embeddings."""
        return self.probe(torch.cat([feat_v, feat_a], dim=1))

    def forward(self, feat_v: Tensor, feat_a: Tensor, fmap_v: Tensor) -> Tensor:
        with torch.no_grad():
            self.last_map = self.attention(feat_a, fmap_v)
        return self.probe_logits(feat_v, feat_a)


@FUSION_HEADS.register("ssl_lvs")
class HardNegativeCorrespondenceHead(CorrespondenceHead):
    """The correspondence head trained with LVS's hard negatives inside the image (``ssl_loss = 'lvs'``)."""

    ssl_loss: ClassVar[str] = "lvs"
