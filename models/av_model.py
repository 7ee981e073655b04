"""The audio-visual model wrapper and its builder.

Submodule names ``net_frame``, ``net_sound`` and ``net_classifier`` follow the original code, so
per-module checkpoints (``model.net_frame.state_dict()`` ...) keep those names.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from models.fusion import FusionHead
from models.registry import FRAME_NETS, FUSION_HEADS, SOUND_NETS


class ModelOutput(NamedTuple):
    logits: Tensor
    feat_v: Tensor | None
    feat_a: Tensor | None
    fmap_v: Tensor | None


def feature_cosine(out: ModelOutput) -> Tensor | None:
    """Per-sample cos(feat_v, feat_a); None for a unimodal model or embeddings of different widths."""
    if out.feat_v is None or out.feat_a is None or out.feat_v.shape != out.feat_a.shape:
        return None
    return F.cosine_similarity(out.feat_v.detach().float(), out.feat_a.detach().float(), dim=1)


class AVModel(nn.Module):
    """``AVModel(frames, audio) -> ModelOutput``; the encoder of a modality the head ignores is None.

    ``frames [B, 3, T, H, W]`` in [0, 1] and ``audio [B, 1, L]`` in [-1, 1]; normalisation and
    spectrogram front ends are inside the encoders.
    """

    def __init__(self, net_frame: nn.Module | None, net_sound: nn.Module | None,
                 net_classifier: FusionHead) -> None:
        super().__init__()
        for modality, net in (("visual", net_frame), ("audio", net_sound)):
            if (modality in net_classifier.modalities) != (net is not None):
                state = "needs" if net is None else "does not use"
                raise ValueError(f"{type(net_classifier).__name__} {state} a {modality} encoder")
        self.net_frame = net_frame
        self.net_sound = net_sound
        self.net_classifier = net_classifier

    @property
    def uses_visual(self) -> bool:
        return self.net_frame is not None

    @property
    def uses_audio(self) -> bool:
        return self.net_sound is not None

    def encode_visual(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """``(feat_v, fmap_v)``: the visual embedding the head sees and the feature map before pooling."""
        if self.net_frame is None:
            raise ValueError("this model does not use the visual modality")
        return self.net_frame(frames)

    def encode_audio(self, audio: Tensor) -> Tensor:
        """``feat_a``: the audio embedding the head sees."""
        if self.net_sound is None:
            raise ValueError("this model does not use the audio modality")
        return self.net_sound(audio)

    def fuse(self, feat_v: Tensor | None, feat_a: Tensor | None, fmap_v: Tensor | None) -> ModelOutput:
        """The head on the embeddings of ``encode_visual`` / ``encode_audio``."""
        return ModelOutput(self.net_classifier(feat_v, feat_a, fmap_v), feat_v, feat_a, fmap_v)

    def encode(self, frames: Tensor | None, audio: Tensor | None) -> tuple[Tensor | None, Tensor | None,
                                                                           Tensor | None]:
        """``(feat_v, fmap_v, feat_a)`` of the encoders the head uses (None for the others)."""
        feat_v = fmap_v = feat_a = None
        if self.net_frame is not None:
            if frames is None:
                raise ValueError("this model uses the visual modality but frames is None")
            feat_v, fmap_v = self.encode_visual(frames)
        if self.net_sound is not None:
            if audio is None:
                raise ValueError("this model uses the audio modality but audio is None")
            feat_a = self.encode_audio(audio)
        return feat_v, fmap_v, feat_a

    def forward(self, frames: Tensor | None, audio: Tensor | None) -> ModelOutput:
        """``fuse(*encode(...))``: subclasses change ``encode_visual`` / ``encode_audio`` / ``fuse``, and
        attacks that encode a fixed modality once see the same model."""
        feat_v, fmap_v, feat_a = self.encode(frames, audio)
        return self.fuse(feat_v, fmap_v=fmap_v, feat_a=feat_a)


def _construct(cls: type, kind: str, context: dict[str, Any], explicit: dict[str, Any]) -> nn.Module:
    """Build ``cls`` with the keyword arguments its constructor declares.

    ``context`` options (image pooling, audio rate, STFT sizes) are passed where accepted.
    ``explicit`` options that are None keep the class default; a non-None one the class does not
    accept is an error rather than silently ignored.
    """
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in context.items() if k in params}
    for key, value in explicit.items():
        if value is None:
            continue
        if key not in params:
            accepted = [p for p in params if p not in context]
            raise ValueError(f"{kind} {cls.__name__} does not take '{key}' (it takes: {accepted})")
        kwargs[key] = value
    return cls(**kwargs)


def build_model(
    arch_frame: str = "resnet18",
    arch_sound: str = "anet",
    arch_classifier: str = "concat",
    cls_num: int = 11,
    img_pool: str = "max",
    weights_frame: str | os.PathLike | None = None,
    audRate: int = 11025,
    stft_frame: int = 1022,
    stft_hop: int = 256,
    frame_dim: int | None = None,
    sound_dim: int | None = None,
    frame_padding: str | None = None,
    **head_kwargs: Any,
) -> AVModel:
    """Build an ``AVModel`` from registry names; encoders the head does not use are not built.

    All three names are checked, used or not: an unknown one raises ``UnknownNameError`` (a
    ValueError and a KeyError) listing the registered names.

    ``frame_dim`` / ``sound_dim`` set the output width of encoders that take ``dim`` (smallcnn,
    anet, stft, mel); ``frame_padding`` the border of the CNN frame encoders' convolutions (smallcnn, poolcnn:
    zeros or reflect); ``head_kwargs`` go to the fusion head (e.g. ``rank`` for bilinear). None
    means the class default; a non-None option the chosen class does not take raises ValueError.
    """
    frame_cls = FRAME_NETS.get(arch_frame)
    sound_cls = SOUND_NETS.get(arch_sound)
    head_cls = FUSION_HEADS.get(arch_classifier)
    net_frame = net_sound = None
    if "visual" in head_cls.modalities:
        net_frame = _construct(frame_cls, FRAME_NETS.kind, {"img_pool": img_pool},
                               {"weights": weights_frame, "dim": frame_dim, "padding": frame_padding})
    if "audio" in head_cls.modalities:
        net_sound = _construct(sound_cls, SOUND_NETS.kind,
                               {"audRate": audRate, "stft_frame": stft_frame, "stft_hop": stft_hop},
                               {"dim": sound_dim})
    dim_v = net_frame.out_dim if net_frame is not None else 0
    dim_a = net_sound.out_dim if net_sound is not None else 0
    head_context = {"dim_v": dim_v, "dim_a": dim_a, "num_classes": cls_num}
    head = _construct(head_cls, FUSION_HEADS.kind, head_context, head_kwargs)
    if getattr(head, "momentum_encoders", False):
        head.attach_encoders(net_frame, net_sound)
    return AVModel(net_frame, net_sound, head)
