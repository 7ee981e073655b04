"""Reading frames and audio windows from the SoP layout; every failure names the file it came from."""
from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import soundfile as sf
from PIL import Image

from dataset.geometry import resized_size
from dataset.index import DataError
from dataset.wav_header import wav_truncation

# Extra source samples read on each side of a window that gets resampled, so the polyphase
# filter sees real signal rather than an edge.
_RESAMPLE_PAD = 64
_PCM16_SCALE = np.float32(2.0 ** -15)


def _open_error(path: str, err: OSError) -> DataError:
    if isinstance(err, FileNotFoundError):
        return DataError(f"frame {path}: file not found")
    return DataError(f"frame {path}: cannot decode ({err})")


def decode_frame(path: str, shorter: int | None = None) -> tuple[Image.Image, tuple[int, int],
                                                                   tuple[float, float, float, float] | None]:
    """An RGB frame, its stored (width, height), and where the stored frame lies in the decoded image when that
    was decoded at a reduced scale (else None). A missing, truncated or undecodable file raises DataError naming it.

    ``shorter`` is the shorter side the caller will resize the frame to. A JPEG whose shorter side is at least
    twice that is decoded with PIL's draft mode: libjpeg scales it down by 1/2, 1/4 or 1/8 in the DCT domain
    while decoding, keeping it at least as large as the resized frame, at a fraction of the decoding cost.
    """
    try:
        with Image.open(path) as img:
            full_size = img.size
            reduced_box = None
            if shorter is not None and min(full_size) >= 2 * shorter:
                draft = img.draft("RGB", resized_size(full_size, shorter))  # None: not a JPEG
                if draft is not None and img.size != full_size:
                    reduced_box = draft[1]
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB"), full_size, reduced_box
    except OSError as err:
        raise _open_error(path, err) from None


def read_jpeg(path: str) -> tuple[bytes, tuple[int, int]]:
    """The encoded bytes of a JPEG frame and its (width, height), read from its header without decoding it;
    DataError naming the file when it is missing, unreadable, not a JPEG or cut short."""
    try:
        with open(path, "rb") as file:
            data = file.read()
        with Image.open(io.BytesIO(data)) as img:
            size, kind = img.size, img.format
    except OSError as err:
        raise _open_error(path, err) from None
    if kind != "JPEG":
        raise DataError(f"frame {path}: a {kind} file, not a JPEG (decoding on the device reads JPEG only)")
    if not data.endswith(b"\xff\xd9"):  # nvJPEG may decode a cut-off file without complaint
        raise DataError(f"frame {path}: not a complete JPEG (no end-of-image marker)")
    return data, size


def _read_circular(sound: sf.SoundFile, start: int, count: int) -> np.ndarray:
    """Frames ``start .. start+count`` of the open file, indices taken modulo its length (tiling short clips):
    [count] for a mono file, [count, channels] otherwise. Only the window is read when it lies inside the file."""
    total = sound.frames
    inside = 0 <= start and start + count <= total
    sound.seek(start if inside else 0)
    if sound.subtype == "PCM_16":  # what preprocessing writes: libsndfile's float is the level times 2^-15, exactly
        data = sound.read(count if inside else total, dtype="int16") * _PCM16_SCALE
    else:
        data = sound.read(count if inside else total, dtype="float32")
    if data.shape[0] != (count if inside else total):
        raise DataError(f"audio {sound.name}: read {data.shape[0]} samples where {count if inside else total} "
                        "were expected (file shorter than its header says)")
    return data if inside else data[np.arange(start, start + count) % total]


def load_audio_window(path: str, center_time: float, length: int, rate: int) -> np.ndarray:
    """``length`` mono samples at ``rate`` Hz centred on ``center_time`` seconds.

    Stereo is averaged to mono, other sample rates are resampled (polyphase), and a window that runs
    past either end of the clip wraps around, so audio shorter than the window is tiled. A wav holding
    fewer frames than its header declares (cut short) raises DataError rather than being tiled. The file is
    opened once and only the window is read (the whole file only when the window wraps around).
    """
    try:
        sound = sf.SoundFile(path)
    except Exception as err:  # soundfile raises RuntimeError / LibsndfileError / FileNotFoundError
        raise DataError(f"audio {path}: cannot open ({err})") from None
    with sound:
        if sound.frames <= 0:
            raise DataError(f"audio {path}: no samples")
        truncation = wav_truncation(path)
        if truncation is not None:
            raise DataError(f"audio {path}: {truncation}")
        src_rate = sound.samplerate
        ratio = Fraction(rate, src_rate)
        try:
            if ratio == 1:
                start = round(center_time * rate) - length // 2
                mono = _mono(_read_circular(sound, start, length))
            else:
                from scipy.signal import resample_poly  # imported here: scipy.signal takes ~1 s to import

                src_len = math.ceil(length / ratio) + 2 * _RESAMPLE_PAD
                src_start = round(center_time * src_rate) - src_len // 2
                res = resample_poly(_mono(_read_circular(sound, src_start, src_len)), ratio.numerator,
                                    ratio.denominator)
                mid = len(res) // 2
                mono = res[mid - length // 2: mid - length // 2 + length]
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"audio {path}: cannot read ({err})") from None
    if not np.all(np.isfinite(mono)):
        raise DataError(f"audio {path}: contains NaN or infinite samples")
    return mono.astype(np.float32, copy=False)


def _mono(data: np.ndarray) -> np.ndarray:
    """Samples averaged over channels; a mono read is already 1-D."""
    return data if data.ndim == 1 else data.mean(axis=1)
