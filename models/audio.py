"""Sound encoders: waveform ``[B, 1, L]`` in [-1, 1] -> ``feat_a [B, D]``.

Spectrogram front ends run inside the model with ``torch.stft`` (no torchaudio), so they are
differentiable and attacks can perturb the raw waveform.

Which to use: ``anet`` is the paper's and learns from the raw waveform only with many clips and long
training; trained from scratch on small data (a CPU run, your own dataset) ``mel`` learns in a few epochs and
copes better with noise (bench/bench_learn.py); ``stft`` keeps the full frequency resolution, for classes told
apart by fine pitch.
"""
from __future__ import annotations

import librosa
import torch
from torch import Tensor, nn

from models.registry import SOUND_NETS


def _check_wave(wave: Tensor) -> None:
    if wave.dim() != 3 or wave.shape[1] != 1:
        raise ValueError(f"audio must be [B, 1, L], got {tuple(wave.shape)}")


def _conv_bn_relu(ndim: int, c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    conv, norm = (nn.Conv1d, nn.BatchNorm1d) if ndim == 1 else (nn.Conv2d, nn.BatchNorm2d)
    return [conv(c_in, c_out, 3, stride=stride, padding=1, bias=False), norm(c_out), nn.ReLU(inplace=True)]


def _widths(dim: int) -> tuple[int, int, int, int]:
    """Channel widths of the four blocks, ``dim/8, dim/4, dim/2, dim`` (64-128-256-512 for 512)."""
    if dim % 8:
        raise ValueError(f"sound net dim must be a multiple of 8, got {dim}")
    return dim // 8, dim // 4, dim // 2, dim


@SOUND_NETS.register("anet")
class ANet(nn.Module):
    """The paper's 1-D CNN on the raw waveform.

    Four blocks of two conv1d (kernel 3, stride 2) with BN+ReLU and a max-pool (kernel 2), then a
    global max pool. Each block shortens the signal 8x, so 65535 samples end as 16 steps.
    """

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.out_dim = dim
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in _widths(dim):
            layers += [*_conv_bn_relu(1, c_in, c_out, 2), *_conv_bn_relu(1, c_out, c_out, 2)]
            layers.append(nn.MaxPool1d(2, ceil_mode=True))
            c_in = c_out
        self.body = nn.Sequential(*layers)

    def forward(self, wave: Tensor) -> Tensor:
        _check_wave(wave)
        return self.body(wave).amax(dim=-1)


class SpectrogramNet(nn.Module):
    """A 2-D CNN over a time-frequency image made by ``spectrogram``; global max pool to ``dim``.

    A ResNet-like plain layout (no residuals), total stride 32: a stride-2 conv and a 2x max-pool
    stem, then four blocks of two conv3x3 with BN+ReLU (``dim/8 .. dim`` channels), the last three
    starting with stride 2. A 512 x 256 STFT costs about as much as ResNet-18 on 224 px.
    """

    def __init__(self, stft_frame: int, stft_hop: int, dim: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.stft_frame = stft_frame
        self.stft_hop = stft_hop
        self.register_buffer("window", torch.hann_window(stft_frame), persistent=False)
        widths = _widths(dim)
        layers = [*_conv_bn_relu(2, 1, widths[0], 2), nn.MaxPool2d(2, ceil_mode=True)]
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            layers += [*_conv_bn_relu(2, c_in, c_out, 1 if i == 0 else 2), *_conv_bn_relu(2, c_out, c_out, 1)]
            c_in = c_out
        self.body = nn.Sequential(*layers)

    def stft(self, wave: Tensor) -> Tensor:
        """Complex STFT ``[B, stft_frame // 2 + 1, frames]`` of ``wave [B, 1, L]``."""
        return torch.stft(wave.squeeze(1), self.stft_frame, self.stft_hop, window=self.window,
                          center=True, return_complex=True)

    def spectrogram(self, wave: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, wave: Tensor) -> Tensor:
        _check_wave(wave)
        return self.body(self.spectrogram(wave).unsqueeze(1)).amax(dim=(-2, -1))


@SOUND_NETS.register("stft")
class STFTNet(SpectrogramNet):
    """Log-magnitude STFT, ``log1p(|X|)``, with ``stft_frame`` 1022 / ``stft_hop`` 256 (512 bins)."""

    def __init__(self, stft_frame: int = 1022, stft_hop: int = 256, dim: int = 512) -> None:
        super().__init__(stft_frame, stft_hop, dim)

    def spectrogram(self, wave: Tensor) -> Tensor:
        return torch.log1p(self.stft(wave).abs())


@SOUND_NETS.register("mel")
class MelNet(SpectrogramNet):
    """Log-mel spectrogram, ``log(mel(|X|^2) + 1e-6)``, 64 bands from ``librosa.filters.mel``."""

    def __init__(self, audRate: int = 11025, stft_frame: int = 1022, stft_hop: int = 256, dim: int = 512,
                 n_mels: int = 64) -> None:
        super().__init__(stft_frame, stft_hop, dim)
        filters = librosa.filters.mel(sr=audRate, n_fft=stft_frame, n_mels=n_mels)
        self.register_buffer("mel_filters", torch.from_numpy(filters).float(), persistent=False)

    def spectrogram(self, wave: Tensor) -> Tensor:
        spec = self.stft(wave)
        power = spec.real.square() + spec.imag.square()
        return torch.log(torch.matmul(self.mel_filters, power) + 1e-6)
