"""Natural corruptions of audio-visual clips and missing modalities, at severities 1..5 (0 is the identity).

Inputs are batches: frames ``[B, 3, T, H, W]`` in [0, 1], audio ``[B, 1, L]`` in [-1, 1]; outputs keep the
shape, dtype, device and range. Each sample draws its randomness from its own generator seeded by
(seed, corruption, severity, sample id) (``sample_generator``), so a sample's corrupted input does not depend
on the batch it is in, the batch size or the number of workers or ranks.

Severity parameters (one table per corruption, ``Corruption.levels``; gaussian_noise, gaussian_blur, jpeg,
contrast and brightness take ImageNet-C's levels, Hendrycks & Dietterich 2019, brightness added in RGB
rather than HSV value):

==============  ======  ===================================================  ======================================
corruption      input   parameter                                            severities 1, 2, 3, 4, 5
==============  ======  ===================================================  ======================================
gaussian_noise  visual  σ of added N(0, σ²), pixel units                     0.08, 0.12, 0.18, 0.26, 0.38
gaussian_blur   visual  σ of the Gaussian kernel, pixels (radius ⌈3σ⌉)        1, 2, 3, 4, 6
jpeg            visual  JPEG quality (real encode + decode, Pillow)          25, 18, 15, 10, 7
brightness      visual  added to every pixel                                 0.1, 0.2, 0.3, 0.4, 0.5
contrast        visual  factor towards the frame's mean                      0.4, 0.3, 0.2, 0.1, 0.05
occlusion       visual  side of a black square / shorter image side          0.2, 0.3, 0.4, 0.5, 0.6
pixelate        visual  side of the square blocks of mean colour, pixels     2, 3, 4, 6, 8
white_noise     audio   SNR of added white noise to the clip's power, dB     30, 20, 10, 5, 0
lowpass         audio   cut-off, Hz (zero-phase 4th-order Butterworth gain)   4000, 2000, 1000, 500, 250
clipping        audio   hard-clip level / the clip's peak                    0.6, 0.4, 0.25, 0.15, 0.08
dropout         audio   silent segment / window length                       0.05, 0.1, 0.2, 0.3, 0.4
reverb          audio   synthetic room: (RT60 s, direct-to-reverberant dB)   (0.2, 6), (0.4, 3), (0.7, 0),
                                                                             (1.0, -3), (1.5, -6)
aac             audio   AAC bit rate, bit/s (real encode + decode, PyAV)     64k, 32k, 16k, 12k, 8k
==============  ======  ===================================================  ======================================

Random draws: gaussian_noise / white_noise their noise, occlusion the patch position (the same on every
frame of a clip), dropout the segment's start, reverb the impulse response's noise tail. The room impulse
response is 1 at lag 0 followed by Gaussian noise decaying by 60 dB over RT60 and scaled to the
direct-to-reverberant ratio; the reverberant clip is brought back to the clean clip's energy (then scaled
down if its peak would exceed 1). AAC encodes mono at the clip's sample rate and drops the encoder's priming
samples, so the output is aligned with and exactly as long as the input.

Co-occurring pairs (``PAIRS``, AVRobustBench's setting: one visual and one audio corruption at the same
severity at once, each drawing the same randomness as alone) match corruptions of a kind: noise
(gaussian_noise + white_noise), smoothing (gaussian_blur + lowpass), lossy compression (jpeg + aac), a
missing part (occlusion + dropout) and lost dynamic range (contrast + clipping).

Missing modality (``missing_<visual|audio>_<fill>``, no severity): the modality replaced by ``zeros``, by
the training split's ``mean`` (per-channel pixel mean for frames, the mean waveform value for audio), or by
``noise`` drawn from N(training mean, training std²) per channel, clipped to the valid range.
"""
from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.fft import next_fast_len
from torch import Tensor

SEVERITIES = (1, 2, 3, 4, 5)
VISUAL, AUDIO, BOTH, MISSING = "visual", "audio", "both", "missing"
MISSING_FILLS = ("zeros", "mean", "noise")
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)

# One sample's corruption: (sample without batch dim, severity parameter, generator, audio sample rate).
SampleFn = Callable[[Tensor, Any, torch.Generator, int], Tensor]


# ------------------------------------------------------------------------------------------------ visual

def gaussian_noise(frames: Tensor, sigma: float, gen: torch.Generator, rate: int) -> Tensor:
    noise = torch.randn(frames.shape, generator=gen, dtype=torch.float32).to(frames.device, frames.dtype)
    return (frames + sigma * noise).clamp(0.0, 1.0)


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets.pow(2) / (2 * sigma * sigma))
    return (kernel / kernel.sum()).to(device, dtype)


def gaussian_blur(frames: Tensor, sigma: float, gen: torch.Generator, rate: int) -> Tensor:
    """Separable Gaussian blur of every frame; the border is extended (replicate) so any image size works."""
    images = frames.transpose(0, 1)  # T, 3, H, W
    kernel = _gaussian_kernel(sigma, frames.dtype, frames.device)
    radius = kernel.numel() // 2
    rows = kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1)
    cols = kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), rows, groups=3)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), cols, groups=3)
    return out.transpose(0, 1).clamp(0.0, 1.0).contiguous()


def jpeg(frames: Tensor, quality: int, gen: torch.Generator, rate: int) -> Tensor:
    """Each frame encoded as a baseline JPEG at ``quality`` (Pillow, 4:2:0 chroma) and decoded again (8-bit)."""
    pixels = (frames.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()
    decoded = []
    for image in pixels:  # T x (H, W, 3)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        with Image.open(buffer) as reloaded:
            decoded.append(np.asarray(reloaded.convert("RGB"), dtype=np.float32))
    out = torch.from_numpy(np.stack(decoded) / np.float32(255)).permute(3, 0, 1, 2)
    return out.to(frames.device, frames.dtype).contiguous()


def brightness(frames: Tensor, shift: float, gen: torch.Generator, rate: int) -> Tensor:
    return (frames + shift).clamp(0.0, 1.0)


def contrast(frames: Tensor, factor: float, gen: torch.Generator, rate: int) -> Tensor:
    mean = frames.mean(dim=(0, 2, 3), keepdim=True)  # per frame, over channels and pixels
    return ((frames - mean) * factor + mean).clamp(0.0, 1.0)


def occlusion(frames: Tensor, side_fraction: float, gen: torch.Generator, rate: int) -> Tensor:
    height, width = frames.shape[-2:]
    side = max(1, round(side_fraction * min(height, width)))
    top = int(torch.randint(0, height - side + 1, (1,), generator=gen))
    left = int(torch.randint(0, width - side + 1, (1,), generator=gen))
    out = frames.clone()
    out[..., top:top + side, left:left + side] = 0.0
    return out


def pixelate(frames: Tensor, block: int, gen: torch.Generator, rate: int) -> Tensor:
    """Each ``block`` x ``block`` tile (from the top-left corner; the last ones cut by the border) set to its
    mean colour."""
    height, width = frames.shape[-2:]
    images = F.pad(frames.transpose(0, 1), (0, (-width) % block, 0, (-height) % block), mode="replicate")
    tiles = F.avg_pool2d(images, block)
    out = tiles.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)[..., :height, :width]
    return out.transpose(0, 1).clamp(0.0, 1.0).contiguous()


# ------------------------------------------------------------------------------------------------- audio

def white_noise(audio: Tensor, snr_db: float, gen: torch.Generator, rate: int) -> Tensor:
    power = audio.double().pow(2).mean()
    sigma = float(torch.sqrt(power / 10 ** (snr_db / 10)))
    noise = torch.randn(audio.shape, generator=gen, dtype=torch.float32).to(audio.device, audio.dtype)
    return (audio + sigma * noise).clamp(-1.0, 1.0)


def _fft_size(length: int) -> int:
    """A length >= ``length`` with small prime factors only: 65535 (MUSIC's window) has 257 (slow FFTs)."""
    return next_fast_len(length, real=True)


def lowpass(audio: Tensor, cutoff_hz: float, gen: torch.Generator, rate: int) -> Tensor:
    """Zero-phase low-pass: the spectrum times a 4th-order Butterworth magnitude 1 / sqrt(1 + (f/fc)^8), on the
    zero-padded clip (so the filter does not wrap its end onto its start)."""
    length = audio.shape[-1]
    size = _fft_size(length + 2 * math.ceil(rate / cutoff_hz))
    spectrum = torch.fft.rfft(audio.double(), n=size, dim=-1)
    freqs = torch.fft.rfftfreq(size, d=1.0 / rate, dtype=torch.float64, device=audio.device)
    gain = 1.0 / torch.sqrt(1.0 + (freqs / cutoff_hz) ** 8)
    return torch.fft.irfft(spectrum * gain, n=size, dim=-1)[..., :length].clamp(-1.0, 1.0).to(audio.dtype)


def clipping(audio: Tensor, level: float, gen: torch.Generator, rate: int) -> Tensor:
    threshold = level * float(audio.abs().max())
    return audio.clamp(-threshold, threshold)


def dropout(audio: Tensor, fraction: float, gen: torch.Generator, rate: int) -> Tensor:
    length = audio.shape[-1]
    size = max(1, round(fraction * length))
    start = int(torch.randint(0, length - size + 1, (1,), generator=gen))
    out = audio.clone()
    out[..., start:start + size] = 0.0
    return out


def room_impulse_response(rt60: float, drr_db: float, rate: int, max_length: int, gen: torch.Generator) -> Tensor:
    """1 at lag 0, then Gaussian noise decaying by 60 dB over ``rt60`` seconds, its energy 10^(-drr/10)."""
    length = max(2, min(max_length, math.ceil(rt60 * rate)))
    lags = torch.arange(1, length, dtype=torch.float64)
    decay = torch.exp(-math.log(1000) * lags / (rt60 * rate))  # amplitude 10^-3 (-60 dB) at rt60
    tail = torch.randn(length - 1, generator=gen, dtype=torch.float64) * decay
    tail *= math.sqrt(10 ** (-drr_db / 10) / float(tail.pow(2).sum()))
    return torch.cat([torch.ones(1, dtype=torch.float64), tail])


def reverb(audio: Tensor, room: tuple[float, float], gen: torch.Generator, rate: int) -> Tensor:
    length = audio.shape[-1]
    response = room_impulse_response(room[0], room[1], rate, length, gen).to(audio.device)
    size = _fft_size(length + response.numel() - 1)
    wet = torch.fft.irfft(torch.fft.rfft(audio.double(), n=size) * torch.fft.rfft(response, n=size), n=size)
    wet = wet[..., :length]
    energy = float(wet.pow(2).sum())
    if energy > 0:
        wet = wet * math.sqrt(float(audio.double().pow(2).sum()) / energy)
    peak = float(wet.abs().max())
    if peak > 1.0:
        wet = wet / peak
    return wet.to(audio.dtype)


def aac(audio: Tensor, bit_rate: int, gen: torch.Generator, rate: int) -> Tensor:
    """AAC encode and decode through PyAV (FFmpeg's encoder, mono, at ``rate``), aligned to the input."""
    if rate not in AAC_RATES:
        raise ValueError(f"aac corruption: sample rate {rate} Hz is not an AAC rate ({', '.join(map(str, AAC_RATES))})")
    wave = audio.detach().float().cpu().numpy().reshape(-1)
    length = wave.size
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate, encoder.layout, encoder.format = rate, "mono", "fltp"
    encoder.bit_rate = bit_rate
    encoder.time_base = Fraction(1, rate)
    encoder.open()
    frame_size = encoder.frame_size
    padded = np.zeros(length + (-length) % frame_size + 2 * frame_size, dtype=np.float32)  # flushes the delay
    padded[:length] = wave
    packets = []
    for start in range(0, padded.size, frame_size):
        frame = av.AudioFrame.from_ndarray(padded[None, start:start + frame_size], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    priming = -int(packets[0].pts)  # the encoder's delay, stamped on its first packet
    decoder = av.CodecContext.create("aac", "r")
    decoder.sample_rate, decoder.layout = rate, "mono"
    if encoder.extradata:
        decoder.extradata = encoder.extradata
    decoded = [frame.to_ndarray().reshape(-1) for packet in packets + [None] for frame in decoder.decode(packet)]
    out = np.concatenate(decoded)[priming:priming + length]
    if out.size != length:
        raise RuntimeError(f"aac corruption: decoded {out.size} samples where {length} were expected")
    return torch.from_numpy(np.clip(out, -1.0, 1.0)).view(audio.shape).to(audio.device, audio.dtype)


# --------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Corruption:
    """One corruption of one modality: its per-sample function and its parameter at severities 1..5."""

    name: str
    modality: str
    levels: tuple
    parameter: str
    apply_sample: SampleFn

    def level(self, severity: int) -> Any:
        return self.levels[severity - 1]


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gaussian_noise", VISUAL, (0.08, 0.12, 0.18, 0.26, 0.38), "noise σ (pixels)", gaussian_noise),
    Corruption("gaussian_blur", VISUAL, (1, 2, 3, 4, 6), "kernel σ (pixels)", gaussian_blur),
    Corruption("jpeg", VISUAL, (25, 18, 15, 10, 7), "JPEG quality", jpeg),
    Corruption("brightness", VISUAL, (0.1, 0.2, 0.3, 0.4, 0.5), "added level", brightness),
    Corruption("contrast", VISUAL, (0.4, 0.3, 0.2, 0.1, 0.05), "contrast factor", contrast),
    Corruption("occlusion", VISUAL, (0.2, 0.3, 0.4, 0.5, 0.6), "patch side / image side", occlusion),
    Corruption("pixelate", VISUAL, (2, 3, 4, 6, 8), "block side (pixels)", pixelate),
    Corruption("white_noise", AUDIO, (30, 20, 10, 5, 0), "SNR (dB)", white_noise),
    Corruption("lowpass", AUDIO, (4000, 2000, 1000, 500, 250), "cut-off (Hz)", lowpass),
    Corruption("clipping", AUDIO, (0.6, 0.4, 0.25, 0.15, 0.08), "clip level / peak", clipping),
    Corruption("dropout", AUDIO, (0.05, 0.1, 0.2, 0.3, 0.4), "silent share of the window", dropout),
    Corruption("reverb", AUDIO, ((0.2, 6), (0.4, 3), (0.7, 0), (1.0, -3), (1.5, -6)), "(RT60 s, DRR dB)", reverb),
    Corruption("aac", AUDIO, (64000, 32000, 16000, 12000, 8000), "bit rate (bit/s)", aac),
)}

PAIRS = (("gaussian_noise", "white_noise"), ("gaussian_blur", "lowpass"), ("jpeg", "aac"),
         ("occlusion", "dropout"), ("contrast", "clipping"))
PAIR_NAMES = tuple(f"{v}+{a}" for v, a in PAIRS)
MISSING_NAMES = tuple(f"missing_{m}_{fill}" for m in (VISUAL, AUDIO) for fill in MISSING_FILLS)
GROUPS = {VISUAL: tuple(n for n, c in CORRUPTIONS.items() if c.modality == VISUAL),
          AUDIO: tuple(n for n, c in CORRUPTIONS.items() if c.modality == AUDIO),
          BOTH: PAIR_NAMES, MISSING: MISSING_NAMES}
SUITE = tuple(name for names in GROUPS.values() for name in names)


def group_of(name: str) -> str:
    return next(group for group, names in GROUPS.items() if name in names)


def resolve_names(names: Sequence[str]) -> list[str]:
    """The suite's names selected by ``names`` (corruptions, ``visual+audio`` pairs, ``missing_*`` or whole
    groups), in suite order; no names = the whole suite."""
    if not names:
        return list(SUITE)
    chosen = set()
    for name in names:
        if name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in SUITE:
            chosen.add(name)
        else:
            raise ValueError(f"unknown corruption {name!r}; choose from the groups {', '.join(GROUPS)} or "
                             f"{', '.join(SUITE)}")
    return [name for name in SUITE if name in chosen]


def sample_generator(seed: int, name: str, severity: int, sample_id: str) -> torch.Generator:
    """A CPU generator seeded by a hash of (seed, corruption, severity, sample id)."""
    digest = hashlib.sha256(f"{seed}\x00{name}\x00{severity}\x00{sample_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _check_batch(x: Tensor, modality: str, sample_ids: Sequence[str]) -> None:
    if modality == VISUAL and (x.dim() != 5 or x.shape[1] != 3):
        raise ValueError(f"frames must be [B, 3, T, H, W], got {tuple(x.shape)}")
    if modality == AUDIO and (x.dim() != 3 or x.shape[1] != 1):
        raise ValueError(f"audio must be [B, 1, L], got {tuple(x.shape)}")
    if len(sample_ids) != x.shape[0]:
        raise ValueError(f"{len(sample_ids)} sample ids for a batch of {x.shape[0]}")


def corrupt(name: str, x: Tensor, severity: int, seed: int, sample_ids: Sequence[str],
            sample_rate: int = 11025) -> Tensor:
    """Corruption ``name`` at ``severity`` (0: ``x`` itself) of a batch of frames or audio."""
    corruption = CORRUPTIONS[name]
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0..{SEVERITIES[-1]}, got {severity}")
    _check_batch(x, corruption.modality, sample_ids)
    if severity == 0:
        return x
    level = corruption.level(severity)
    with torch.no_grad():
        return torch.stack([corruption.apply_sample(x[i], level, sample_generator(seed, name, severity, sid),
                                                    sample_rate) for i, sid in enumerate(sample_ids)])


# ------------------------------------------------------------------------------------------ missing input

@dataclass(frozen=True)
class ModalityStats:
    """The training split's per-channel pixel mean and std, the waveform's mean and std, over ``clips``."""

    frame_mean: tuple[float, float, float]
    frame_std: tuple[float, float, float]
    audio_mean: float
    audio_std: float
    clips: int


def missing_modality(x: Tensor, modality: str, fill: str, seed: int, sample_ids: Sequence[str],
                     stats: ModalityStats | None = None) -> Tensor:
    """``x`` (frames or audio) replaced by zeros, the training mean, or noise of the training mean and std."""
    if fill not in MISSING_FILLS:
        raise ValueError(f"missing-modality fill must be one of {', '.join(MISSING_FILLS)}, got {fill!r}")
    _check_batch(x, modality, sample_ids)
    if fill == "zeros":
        return torch.zeros_like(x)
    if stats is None:
        raise ValueError(f"missing-modality fill {fill!r} needs the training split's statistics")
    shape = (1, 3, 1, 1, 1) if modality == VISUAL else (1, 1, 1)
    mean = torch.tensor(stats.frame_mean if modality == VISUAL else [stats.audio_mean], dtype=x.dtype)
    mean = mean.view(shape).to(x.device)
    if fill == "mean":
        return mean.expand_as(x).clone()
    std = torch.tensor(stats.frame_std if modality == VISUAL else [stats.audio_std], dtype=x.dtype)
    std = std.view(shape).to(x.device)
    name = f"missing_{modality}_{fill}"
    noise = torch.stack([torch.randn(x.shape[1:], generator=sample_generator(seed, name, 0, sid))
                         for sid in sample_ids]).to(x.device, x.dtype)
    low, high = (0.0, 1.0) if modality == VISUAL else (-1.0, 1.0)
    return (mean + std * noise).clamp(low, high)
