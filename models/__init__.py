"""Visual and audio encoders, the fusion-head registry and the audio-visual model wrapper.

Importing this package imports every module that registers parts, so all names are available.
"""
from models import audio, correspondence, fusion, visual
from models.av_model import AVModel, ModelOutput, build_model
from models.fusion import FusionHead
from models.registry import FRAME_NETS, FUSION_HEADS, SOUND_NETS, Registry, UnknownNameError

__all__ = [
    "AVModel",
    "FRAME_NETS",
    "FUSION_HEADS",
    "FusionHead",
    "ModelOutput",
    "Registry",
    "SOUND_NETS",
    "UnknownNameError",
    "audio",
    "build_model",
    "correspondence",
    "fusion",
    "visual",
]
