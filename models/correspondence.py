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
  positive, those below a lower one hard negatives inside the image; the other images' locations above the
  threshold are easy negatives;
* ``ssl_fnac``: FNAC (Sun et al., CVPR 2023): EZ-VSL plus false-negative-aware terms that pull the cross-modal
  score matrix towards the within-modality similarities (dropout on the visual features, as FNAC and SLAVC);
* ``ssl_slavc``: SLAVC (Mo & Morgado, NeurIPS 2022): two projections per modality (localization and
  correspondence), dropout on the visual features and momentum (EMA) target projections for the other modality;
* ``ssl_slavc_enc``: SLAVC as published: the momentum targets come from EMA copies of the frame and sound encoders
  too, run on the batch's own inputs.

They differ in that objective (a head attribute, ``ssl_loss``) and their temperature, so they are registered
names: each gets its own run folder and checkpoint check.

Logits, so that the class attacks, the training loop's accuracy and the defense keep working, come from a
linear probe on the concatenated pooled embeddings ``[feat_v, feat_a]``. The objective trains the probe with
the labels on *detached* embeddings (stop-gradient: the standard linear-evaluation protocol of self-supervised
learning), so labels never reach the encoders or the projections; at attack time the logits are an ordinary
differentiable function of the inputs.
"""
from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.fusion import FusionHead
from models.registry import FUSION_HEADS

SSL_LOSSES = ("ezvsl", "ezvsl+avc", "lvs", "fnac", "slavc")


@FUSION_HEADS.register("ssl")
class CorrespondenceHead(FusionHead):
    """Audio-visual correspondence head (see the module docstring); ``ssl_loss`` picks its training objective.

    ``attention(feat_a, fmap_v)`` is the localization map ``[B, h, w]``: the softmax over the h*w locations of
    the similarity divided by ``temperature``, the distribution the contrastive objective sharpens. It ranks the
    locations as the similarity does, so the pointing game and cIoU equal those of the raw similarity map, and
    it is non-negative and sums to 1 like the ``loc`` head's, so the map attack's mass objective applies.

    ``audio_bn`` batch-normalises the audio projection (per dimension, no affine; running statistics at
    evaluation) before the L2 normalisation. Trained from scratch, every clip's audio embedding tends to share one
    large component (the collapse monitor's audio spread near 1), so the map is the same function of the frame
    whatever is heard, and the seed decides whether that function favours the objects or the background; removing
    the batch mean leaves only what tells the clips apart (the centring of DINO, the batch-normalised projectors
    of SimCLR and BYOL). Its statistics are per process under DDP, as the encoders' BatchNorm are.
    """

    needs_fmap: ClassVar[bool] = True
    self_supervised: ClassVar[bool] = True
    ssl_loss: ClassVar[str] = "ezvsl"
    default_temperature: ClassVar[float] = 0.03  # EZ-VSL's
    default_dropout_v: ClassVar[float] = 0.0

    def __init__(self, dim_v: int, dim_a: int, num_classes: int, embed_dim: int = 128,
                 temperature: float | None = None, dropout_v: float | None = None,
                 audio_bn: bool | None = None) -> None:
        super().__init__(dim_v, dim_a, num_classes)
        temperature = self.default_temperature if temperature is None else temperature
        dropout_v = self.default_dropout_v if dropout_v is None else dropout_v
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= dropout_v < 1:
            raise ValueError(f"dropout_v must be in [0, 1), got {dropout_v}")
        self.proj_v = nn.Conv2d(dim_v, embed_dim, kernel_size=1)
        self.proj_a = nn.Linear(dim_a, embed_dim)
        self.probe = nn.Linear(dim_v + dim_a, num_classes)
        self.drop_v = nn.Dropout(dropout_v)  # on the feature map before projection; off in eval mode
        # --ssl_audio_bn: the audio projection batch-normalised (no affine) before the L2 normalisation
        self.audio_norm = nn.BatchNorm1d(embed_dim, affine=False) if audio_bn else nn.Identity()
        self.temperature = temperature
        self.last_map: Tensor | None = None

    def embed_visual(self, fmap_v: Tensor) -> Tensor:
        """``[B, E, h*w]``: every location projected and L2-normalised."""
        return F.normalize(self.proj_v(self.drop_v(fmap_v)).flatten(2), dim=1)

    def embed_audio(self, feat_a: Tensor) -> Tensor:
        """``[B, E]``: the projected (batch-normalised with ``audio_bn``), L2-normalised audio embedding."""
        return F.normalize(self.audio_norm(self.proj_a(feat_a)), dim=1)

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
    """The correspondence head trained with LVS's hard negatives inside the image (``ssl_loss = 'lvs'``), at
    LVS's logit temperature 0.07."""

    ssl_loss: ClassVar[str] = "lvs"
    default_temperature: ClassVar[float] = 0.07


@FUSION_HEADS.register("ssl_avc")
class GlobalCorrespondenceHead(CorrespondenceHead):
    """EZ-VSL's multiple-instance objective plus a clip-level audio-visual correspondence term (``ssl_loss =
    'ezvsl+avc'``): InfoNCE between the audio embedding and the frame's mean location embedding, weighted
    ``avc_weight``. The hard maximum gives gradient to one location per pair only, so a state where every clip's
    best location is the same (a corner of the encoder's zero padding) is a fixed point of EZ-VSL's loss; the
    clip-level term reaches every location and the audio encoder there too."""

    ssl_loss: ClassVar[str] = "ezvsl+avc"

    def __init__(self, dim_v: int, dim_a: int, num_classes: int, embed_dim: int = 128,
                 temperature: float | None = None, dropout_v: float | None = None, avc_weight: float = 1.0,
                 audio_bn: bool | None = None) -> None:
        super().__init__(dim_v, dim_a, num_classes, embed_dim, temperature, dropout_v, audio_bn)
        if avc_weight < 0:
            raise ValueError(f"avc_weight must be >= 0, got {avc_weight}")
        self.avc_weight = avc_weight


@FUSION_HEADS.register("ssl_fnac")
class FalseNegativeAwareHead(CorrespondenceHead):
    """The correspondence head trained with FNAC's objective (``ssl_loss = 'fnac'``): EZ-VSL's plus three
    L1 terms between row-softmaxed score matrices (weights ``fnac_weight``, 100 in FNAC's scripts), and dropout
    0.9 on the visual feature map during training (FNAC's scripts, after SLAVC)."""

    ssl_loss: ClassVar[str] = "fnac"
    default_dropout_v: ClassVar[float] = 0.9

    def __init__(self, dim_v: int, dim_a: int, num_classes: int, embed_dim: int = 128,
                 temperature: float | None = None, dropout_v: float | None = None,
                 fnac_weight: float = 100.0, audio_bn: bool | None = None) -> None:
        super().__init__(dim_v, dim_a, num_classes, embed_dim, temperature, dropout_v, audio_bn)
        if fnac_weight < 0:
            raise ValueError(f"fnac_weight must be >= 0, got {fnac_weight}")
        self.fnac_weight = fnac_weight


@FUSION_HEADS.register("ssl_slavc")
class MomentumCorrespondenceHead(CorrespondenceHead):
    """SLAVC's head (``ssl_loss = 'slavc'``): a localization projection (``proj_v`` / ``proj_a``) and a
    correspondence projection (``proj_v2`` / ``proj_a2``) per modality, dropout on the visual feature map, and
    for each projection a momentum target: an exponential moving average (``momentum``) of its weights that gets
    no gradient and gives the other modality's targets. The map is the mean of the two projections'
    similarities (online weights), as SLAVC's.

    SLAVC also keeps momentum copies of the two encoders; here the targets share the online encoders (their
    features detached), so a checkpoint holds one copy of each encoder.
    """

    ssl_loss: ClassVar[str] = "slavc"
    default_dropout_v: ClassVar[float] = 0.9
    momentum_encoders: ClassVar[bool] = False
    ONLINE: ClassVar[tuple[str, ...]] = ("proj_v", "proj_a", "proj_v2", "proj_a2")

    def __init__(self, dim_v: int, dim_a: int, num_classes: int, embed_dim: int = 128,
                 temperature: float | None = None, dropout_v: float | None = None,
                 momentum: float = 0.999) -> None:
        super().__init__(dim_v, dim_a, num_classes, embed_dim, temperature, dropout_v)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.proj_v2 = nn.Conv2d(dim_v, embed_dim, kernel_size=1)
        self.proj_a2 = nn.Linear(dim_a, embed_dim)
        self.momentum = momentum
        self.target = nn.ModuleDict({name: copy.deepcopy(getattr(self, name)) for name in self.ONLINE})
        for param in self.target.parameters():
            param.requires_grad_(False)

    def online_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` module pairs the EMA step moves."""
        return [(getattr(self, name), self.target[name]) for name in self.ONLINE]

    def ema_momentum(self) -> float | Tensor:
        """The momentum m of the next EMA step."""
        return self.momentum

    @torch.no_grad()
    def update_targets(self) -> None:
        """One EMA step of every target towards its online module: target = m target + (1 - m) online."""
        momentum = self.ema_momentum()
        for online_net, target_net in self.online_pairs():
            for target, online in zip(target_net.parameters(), online_net.parameters()):
                target.mul_(momentum).add_(online.detach() * (1 - momentum))

    def embeddings(self, feat_a: Tensor, fmap_v: Tensor, target: bool = False) -> tuple[Tensor, ...]:
        """``(v1 [B, E, N], v2 [B, E, N], a1 [B, E], a2 [B, E])`` of the online (or target) projections; the
        targets see detached features and give no gradient."""
        nets = self.target if target else {name: getattr(self, name) for name in self.ONLINE}
        if target:
            feat_a, fmap_v = feat_a.detach(), fmap_v.detach()
        fmap_v = self.drop_v(fmap_v)
        v1, v2 = (F.normalize(nets[n](fmap_v).flatten(2), dim=1) for n in ("proj_v", "proj_v2"))
        a1, a2 = (F.normalize(nets[n](feat_a), dim=1) for n in ("proj_a", "proj_a2"))
        return v1, v2, a1, a2

    def similarity(self, feat_a: Tensor, fmap_v: Tensor) -> Tensor:
        """The mean of the two projections' cosine similarities ``[B, h, w]`` (online weights)."""
        b, _, h, w = fmap_v.shape
        v1 = F.normalize(self.proj_v(fmap_v).flatten(2), dim=1)
        v2 = F.normalize(self.proj_v2(fmap_v).flatten(2), dim=1)
        a1, a2 = F.normalize(self.proj_a(feat_a), dim=1), F.normalize(self.proj_a2(feat_a), dim=1)
        sim = 0.5 * (torch.einsum("be,ben->bn", a1, v1) + torch.einsum("be,ben->bn", a2, v2))
        return sim.reshape(b, h, w)


@FUSION_HEADS.register("ssl_slavc_enc")
class MomentumEncoderHead(MomentumCorrespondenceHead):
    """SLAVC with its momentum encoders: the targets of the other modality come from EMA copies of the frame and
    sound encoders (``target["frame"]``, ``target["sound"]``, given by ``attach_encoders``, which ``build_model``
    calls) followed by the target projections, run on the batch's own frames and audio, as in SLAVC's released
    code (its momentum 0.999 over about 22k steps; ``--ssl_momentum`` sets it for shorter runs). The copies get no
    gradient; the first EMA step of a training copies the online encoders exactly (``synced``), so weights loaded
    or pretrained after construction start the targets. The map uses the online weights."""

    momentum_encoders: ClassVar[bool] = True

    def __init__(self, dim_v: int, dim_a: int, num_classes: int, embed_dim: int = 128,
                 temperature: float | None = None, dropout_v: float | None = None,
                 momentum: float = 0.999) -> None:
        super().__init__(dim_v, dim_a, num_classes, embed_dim, temperature, dropout_v, momentum)
        self.register_buffer("synced", torch.zeros((), dtype=torch.bool))
        self.encoders: tuple[nn.Module, nn.Module] | None = None  # the online ones, not registered here

    def attach_encoders(self, net_frame: nn.Module, net_sound: nn.Module) -> None:
        """Keep frozen copies of the model's encoders as momentum targets (and a reference to the online ones)."""
        self.target["frame"] = copy.deepcopy(net_frame).requires_grad_(False)
        self.target["sound"] = copy.deepcopy(net_sound).requires_grad_(False)
        self.encoders = (net_frame, net_sound)  # a tuple: not registered a second time

    def online_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        if self.encoders is None:
            raise RuntimeError("MomentumEncoderHead: attach_encoders was not called (build the model with "
                               "models.build_model)")
        net_frame, net_sound = self.encoders
        return [*super().online_pairs(), (net_frame, self.target["frame"]), (net_sound, self.target["sound"])]

    def ema_momentum(self) -> Tensor:
        """0 before the first step of a training (an exact copy), then m; a tensor, so no host sync."""
        return self.synced.float() * self.momentum

    @torch.no_grad()
    def update_targets(self) -> None:
        """The EMA step; the first one of a training copies every online module into its target."""
        super().update_targets()
        self.synced.fill_(True)

    @torch.no_grad()
    def target_features(self, frames: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """``(feat_a, fmap_v)`` of the momentum encoders on the batch's inputs."""
        return self.target["sound"](audio), self.target["frame"](frames)[1]
