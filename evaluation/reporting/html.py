"""The HTML page of adversarial examples: frames, amplified perturbations, spectrograms and audio players."""
from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from matplotlib import colormaps
from PIL import Image

from evaluation.robustness.records import perturbation_sizes
from utils.fileio import atomic_path, write_text_atomic

STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px; vertical-align: top; font-size: 12px; text-align: center; }
img { display: block; margin: 2px auto; }
.ok { color: #1a7f37; } .fooled { color: #cf222e; font-weight: bold; }
"""


def safe_name(text: str) -> str:
    """A file name derived from a sample id that cannot leave the assets folder."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".")


def save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp)


def frame_image(frames: torch.Tensor) -> np.ndarray:
    """The middle frame of [3, T, H, W] in [0, 1] as uint8 HWC."""
    frame = frames[:, frames.shape[1] // 2]
    return (frame.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _perturbation_image(delta: torch.Tensor) -> np.ndarray:
    """The perturbation of the middle frame, scaled so its largest value spans the grey range."""
    d = delta[:, delta.shape[1] // 2]
    scale = d.abs().max().clamp_min(1e-12)
    return ((d / scale * 0.5 + 0.5).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def waveform_image(delta: torch.Tensor, width: int = 320, height: int = 64) -> np.ndarray:
    """The audio perturbation ``[1, L]`` as a waveform plot: per pixel column its min..max, scaled so the
    largest value reaches the edge (white background, a grey zero line)."""
    wave = delta.reshape(-1).float()
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    image[height // 2] = 200
    scale = float(wave.abs().max())
    if scale == 0 or wave.numel() == 0:
        return image
    columns = torch.tensor_split(wave / scale, min(width, wave.numel()))
    for x, chunk in enumerate(columns):
        low, high = (int(round((1 - float(v)) / 2 * (height - 1))) for v in (chunk.max(), chunk.min()))
        image[low:high + 1, x] = (31, 119, 180)
    return image


def perturbation_caption(clean_frames: torch.Tensor, adv_frames: torch.Tensor, clean_audio: torch.Tensor,
                         adv_audio: torch.Tensor) -> str:
    """This sample's perturbation size: audio SNR in dB, visual L∞ in 1/255 steps and PSNR (dB)."""
    sizes = perturbation_sizes(clean_frames[None], adv_frames[None], clean_audio[None], adv_audio[None])
    parts = []
    if "snr_a" in sizes and math.isfinite(float(sizes["snr_a"][0])):
        parts.append(f"SNR {float(sizes['snr_a'][0]):.1f} dB")
    if "linf_v" in sizes and float(sizes["linf_v"][0]) > 0:
        parts.append(f"L∞ {float(sizes['linf_v'][0]):.2f}/255, PSNR {float(sizes['psnr_v'][0]):.1f} dB")
    return ", ".join(parts) or "inputs unchanged"


def spectrogram_image(audio: torch.Tensor, n_fft: int = 1022, hop: int = 256,
                      value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Log-magnitude STFT of [1, L] as a magma-coloured image (low frequencies at the bottom).
    ``value_range`` fixes the colour scale so clean and adversarial spectrograms compare directly."""
    wave = audio.reshape(-1).float()
    n_fft = min(n_fft, max(16, wave.numel() // 2 * 2 - 2))
    spec = torch.stft(wave, n_fft, hop_length=hop, window=torch.hann_window(n_fft), return_complex=True)
    log_mag = torch.log1p(spec.abs()).numpy()[::-1]
    lo, hi = value_range or (float(log_mag.min()), float(log_mag.max()))
    norm = np.clip((log_mag - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = (colormaps["magma"](norm)[..., :3] * 255).astype(np.uint8)
    return rgb, (lo, hi)


def _save_wav(audio: torch.Tensor, rate: int, path: Path) -> None:
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(tmp, audio.reshape(-1).numpy(), rate, subtype="PCM_16")


def page_layout(out_dir: str | os.PathLike, samples: list[dict]) -> tuple[Path, Path, list[str], str]:
    """``(out_dir, out_dir/assets (created), the adversarial columns in order, their header cells)`` of a page
    whose samples hold one entry per column in ``adv``."""
    out_dir = Path(out_dir)
    assets = out_dir / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(c for s in samples for c in s["adv"]))
    return out_dir, assets, columns, "".join(f"<th>{html.escape(c)} attack</th>" for c in columns)


def write_visualization(samples: list[dict], out_dir: str | os.PathLike, categories: list[str], audio_rate: int,
                        title: str) -> Path:
    """Write ``out_dir/index.html`` and its assets for samples collected by ``evaluate_attacks``."""
    out_dir, assets, budgets, head = page_layout(out_dir, samples)
    rows = []
    for n, sample in enumerate(samples):
        stem = f"{n:03d}_{safe_name(sample['info'])}"
        save_png(frame_image(sample["frames"]), assets / f"{stem}_frame.png")
        spec, value_range = spectrogram_image(sample["audio"])
        save_png(spec, assets / f"{stem}_spec.png")
        _save_wav(sample["audio"], audio_rate, assets / f"{stem}.wav")
        true = categories[sample["label"]]
        cells = [f"<td>{html.escape(sample['info'])}<br>true: <b>{html.escape(true)}</b></td>",
                 _cell(stem, "", categories, sample["clean_pred"], sample["label"], "clean")]
        for budget in budgets:
            adv = sample["adv"].get(budget)
            if adv is None:
                cells.append("<td></td>")
                continue
            tag = f"{stem}_{safe_name(budget)}"
            save_png(frame_image(adv["frames"]), assets / f"{tag}_frame.png")
            save_png(_perturbation_image(adv["frames"] - sample["frames"]), assets / f"{tag}_delta.png")
            save_png(spectrogram_image(adv["audio"], value_range=value_range)[0], assets / f"{tag}_spec.png")
            save_png(waveform_image(adv["audio"] - sample["audio"]), assets / f"{tag}_wave.png")
            _save_wav(adv["audio"], audio_rate, assets / f"{tag}.wav")
            eps = adv["budget"]
            size = perturbation_caption(sample["frames"], adv["frames"], sample["audio"], adv["audio"])
            cells.append(_cell(tag, f"εv={eps['eps_visual']:g}, εa={eps['eps_audio']:g}; {size}", categories,
                               adv["pred"], sample["label"], "adversarial", delta=True))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>Adversarial examples</h1><p>{html.escape(title)}</p>"
            "<p>Each cell: the budget and this sample's perturbation size (audio SNR, visual L∞ in 1/255 steps "
            "and PSNR), frame, amplified visual perturbation (grey = 0), log-magnitude spectrogram on the clean "
            "sample's colour scale, the audio perturbation's waveform (scaled to its peak), audio, "
            "prediction.</p>"
            f"<table><tr><th>sample</th><th>clean</th>{head}</tr>{''.join(rows)}</table></body></html>\n")
    index = out_dir / "index.html"
    write_text_atomic(index, page)
    return index


def _cell(tag: str, caption: str, categories: list[str], pred: int, label: int, kind: str,
          delta: bool = False) -> str:
    status = "ok" if pred == label else "fooled"
    parts = [f"<td>{html.escape(caption)}" if caption else "<td>",
             f"<img src='assets/{tag}_frame.png' width='112' alt='{kind} frame'>"]
    if delta:
        parts.append(f"<img src='assets/{tag}_delta.png' width='112' alt='perturbation'>")
    parts.append(f"<img src='assets/{tag}_spec.png' width='160' height='80' alt='{kind} spectrogram'>")
    if delta:
        parts.append(f"<img src='assets/{tag}_wave.png' width='160' height='32' alt='audio perturbation'>")
    parts += [
              f"<audio controls preload='none' src='assets/{tag}.wav'></audio>",
              f"<div class='{status}'>pred: {html.escape(categories[pred])}</div></td>"]
    return "".join(parts)
