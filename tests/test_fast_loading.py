"""Fast loading: uint8 batches converted once in to_device, reduced JPEG decoding, the epoch reaching persistent
workers, decoding on the device (run here on the CPU) against the CPU path, and --decode_device's errors."""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import arguments
from dataset.av_dataset import AVDataset
from dataset.device_decode import collate_batch
from dataset.geometry import crop_geometry, resize_target, resized_size
from dataset.index import DataError
from dataset.loaders import build_loader, set_epoch, to_device
from dataset.media import decode_frame
from dataset.transforms import cut_window, frames_to_float
from tests.sop_fixture import write_clip, write_index
from utils.distributed import DistInfo

CLASSES = ["cat_a", "cat_b"]
NUM_FRAMES = 24
CPU = torch.device("cpu")


def picture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A frame with structure at every scale: a smooth colour field, hard-edged blocks and mild noise (a flat or
    symmetric picture would hide a wrong crop or flip)."""
    field = Image.fromarray(rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8))
    pixels = np.asarray(field.resize((width, height), Image.BICUBIC), dtype=np.float64)
    for _ in range(6):
        x, y = rng.integers(0, width - width // 4), rng.integers(0, height - height // 4)
        pixels[y:y + height // 4, x:x + width // 5] = rng.integers(0, 256, 3)
    pixels += rng.normal(0, 3, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_textured_root(root, width: int, height: int, per_class: int = 3):
    """The SoP fixture's clips (ramp audio) with textured frames of ``width`` x ``height``: one picture per clip,
    mirrored on even frames so that neighbouring frames differ."""
    rng = np.random.default_rng(width * 1000 + height)
    rows = []
    for cls in CLASSES:
        for i in range(per_class):
            rows.append(write_clip(root, cls, f"v{i}", NUM_FRAMES, size=(height, width)))
            base = picture(rng, width, height)
            for k in range(1, NUM_FRAMES + 1):
                frame = base[:, ::-1] if k % 2 == 0 else base
                Image.fromarray(np.ascontiguousarray(frame)).save(root / "frames" / cls / f"v{i}.mp4" / f"{k:06d}.jpg",
                                                                  quality=95)
    for name in ("train.csv", "test.csv"):
        write_index(root, name, rows)
    return root


def make_dataset(root, train: bool, img_size: int = 32, **kwargs) -> AVDataset:
    return AVDataset(str(root / ("train.csv" if train else "test.csv")), str(root / "audio"), str(root / "frames"),
                     CLASSES, num_frames=2, stride_frames=3, img_size=img_size, aud_len=2048, train=train, seed=5,
                     **kwargs)


def loader_args(workers: int, batch: int = 4) -> argparse.Namespace:
    return argparse.Namespace(batch_size_per_gpu=batch, workers=workers, seed=5, decode_device="cpu")


def old_float_frames(ds: AVDataset, index: int) -> torch.Tensor:
    """The float frames the loader returned before uint8 batches, computed as it did: full PIL decode, bicubic
    resize of the shorter side, crop and flip, numpy float32 / 255."""
    row = ds.rows[index]
    rng = np.random.default_rng([ds.seed, ds.epoch, index]) if ds.train else None
    center = ds.center_frame(row, rng)
    frame_dir = ds.frame_path + row.frames_rel
    imgs = [Image.open(f"{frame_dir}/{center + i * ds.stride_frames - ds.stride_frames:06d}.jpg").convert("RGB")
            for i in range(ds.num_frames)]
    shorter = int(ds.img_size * 1.1) if ds.train else ds.img_size
    resized = []
    for img in imgs:
        w, h = img.size
        if min(w, h) != shorter:
            size = (shorter, max(shorter, round(h * shorter / w))) if w <= h else \
                (max(shorter, round(w * shorter / h)), shorter)
            img = img.resize(size, Image.BICUBIC)
        resized.append(img)
    w, h = resized[0].size
    s = ds.img_size
    if ds.train:
        left, top = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        flip = bool(rng.random() < 0.5)
    else:
        left, top, flip = (w - s) // 2, (h - s) // 2, False
    out = [img.crop((left, top, left + s, top + s)) for img in resized]
    out = [img.transpose(Image.FLIP_LEFT_RIGHT) for img in out] if flip else out
    stack = np.stack([np.asarray(img, dtype=np.uint8) for img in out])
    return torch.from_numpy(np.ascontiguousarray(stack.transpose(3, 0, 1, 2), dtype=np.float32) / np.float32(255))


# ------------------------------------------------------------------------------------------- uint8 batches


def test_every_level_converts_as_numpy_did_and_only_uint8_is_accepted():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 4, 64)
    expected = np.arange(256, dtype=np.float32).reshape(1, 1, 4, 64) / np.float32(255)
    converted = frames_to_float(levels)
    assert converted.dtype == torch.float32 and torch.equal(converted, torch.from_numpy(expected))
    with pytest.raises(TypeError, match="uint8"):
        frames_to_float(converted)  # a second conversion would shrink the pixels by 255 again
    batch = {"frames": levels[None], "audio": torch.zeros(1, 1, 8), "label": torch.zeros(1, dtype=torch.long)}
    once, _, _ = to_device(batch, CPU)
    again, _, _ = to_device({**batch, "frames": once}, CPU)  # float frames are taken as converted
    assert torch.equal(once[0], converted) and torch.equal(again, once)


@pytest.mark.parametrize("train", [True, False])
def test_the_batch_reaching_the_model_matches_the_old_float_batch(tmp_path, train):
    """The old batch resized whole frames and cropped; the loader now resamples only the crop window, from a box
    PIL takes in single precision: a value next to a rounding boundary lands a level off, on a small share of the
    values (the level -> float conversion itself is exact: the test above)."""
    ds = make_dataset(make_textured_root(tmp_path, 48, 40), train)  # 40 px: resized, not reduced
    loader = build_loader(ds, loader_args(workers=0), DistInfo(), train=train)
    differing = total = 0
    for epoch in (0, 1):
        set_epoch(loader, epoch)
        for batch in loader:
            assert batch["frames"].dtype == torch.uint8
            frames, audio, labels = to_device(batch, CPU)
            expected = torch.stack([old_float_frames(ds, int(i)) for i in batch["index"]])
            levels = ((frames - expected) * 255).abs().round()
            assert levels.max().item() <= 2
            differing, total = differing + int((levels > 0).sum()), total + levels.numel()
            assert audio.dtype == torch.float32 and torch.equal(labels, batch["label"])
    assert differing / total < 0.01, differing / total


# ---------------------------------------------------------------------------- decoding and window resampling


def whole_frame_window(path, geometry) -> np.ndarray:
    """The reference window: a plain PIL decode of the whole frame, resized whole (bicubic), cropped, flipped."""
    img = Image.open(path).convert("RGB")
    img = img.resize(resized_size(img.size, geometry.shorter), Image.BICUBIC)
    window = img.crop((geometry.left, geometry.top, geometry.left + geometry.size, geometry.top + geometry.size))
    return np.asarray(window.transpose(Image.FLIP_LEFT_RIGHT) if geometry.flip else window, dtype=np.int16)


@pytest.mark.parametrize(("size", "img_size"), [((455, 256), 224), ((256, 320), 224), ((30, 40), 32)])
def test_the_resampled_window_agrees_with_resizing_the_whole_frame(tmp_path, size, img_size):
    """455 x 256 is what ``preprocess.py --frame_size 256`` stores (1.04 x the 246 px train target, not reduced);
    30 px frames are enlarged. One level apart (two at most) on a small share of the values (measured 0.02-0.4 %,
    the most on the smallest frames); a crop one pixel to the side is far off (so the agreement is not a property
    of the picture)."""
    path = tmp_path / "frame.jpg"
    Image.fromarray(picture(np.random.default_rng(size[0]), *size)).save(path, quality=95)
    rng = np.random.default_rng(1)
    differing = total = 0
    for train in (True, False):
        for _ in range(8 if train else 1):
            img, full_size, reduced_box = decode_frame(str(path), resize_target(img_size, train))
            assert full_size == size and reduced_box is None and img.size == size
            geometry = crop_geometry(full_size, img_size, train, rng)
            window = cut_window(img, full_size, geometry).astype(np.int16)
            assert window.shape == (img_size, img_size, 3)
            diff = np.abs(window - whole_frame_window(path, geometry))
            assert diff.max() <= 2
            differing, total = differing + int((diff > 0).sum()), total + diff.size
            beside = replace(geometry, left=geometry.left + 1 if geometry.left == 0 else geometry.left - 1)
            assert np.abs(window - whole_frame_window(path, beside)).mean() > 3
    assert differing / total < 0.01, differing / total


def test_a_frame_already_at_the_target_is_only_cut(tmp_path):
    path = tmp_path / "frame.jpg"
    Image.fromarray(picture(np.random.default_rng(3), 48, 32)).save(path, quality=95)
    img, full_size, _ = decode_frame(str(path), 32)
    geometry = crop_geometry(full_size, 32, False)
    assert np.array_equal(cut_window(img, full_size, geometry), whole_frame_window(path, geometry))


@pytest.mark.parametrize("cut", [200, 0.6])
@pytest.mark.parametrize("width", [64, 400])  # decoded in full / at reduced scale (400 x 300 >= 2 x 35)
def test_a_cut_off_frame_raises_naming_the_file(tmp_path, cut, width):
    path = tmp_path / "frame.jpg"
    Image.fromarray(picture(np.random.default_rng(4), width, width * 3 // 4)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[:cut if isinstance(cut, int) else int(len(data) * cut)])
    with pytest.raises(DataError, match=rf"^frame {path}: cannot decode"):
        decode_frame(str(path), 35)
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=rf"^frame {path}: cannot decode"):
        decode_frame(str(path), 35)
    with pytest.raises(DataError, match=rf"^frame {tmp_path / 'gone.jpg'}: file not found"):
        decode_frame(str(tmp_path / "gone.jpg"), 35)


# ------------------------------------------------------------------------------------- reduced decoding


def test_reduced_decoding_starts_at_twice_the_target(tmp_path):
    for height, reduced in ((63, False), (64, True)):
        path = tmp_path / f"{height}.jpg"
        Image.fromarray(picture(np.random.default_rng(0), 2 * height, height)).save(path, quality=95)
        img, full_size, box = decode_frame(str(path), 32)
        assert full_size == (2 * height, height)
        assert (box is not None) == reduced and (img.size == (height, height // 2)) == reduced
        assert decode_frame(str(path))[2] is None  # no target: always the full decode
    png = tmp_path / "large.png"  # no reduced decoding outside JPEG
    Image.fromarray(picture(np.random.default_rng(0), 256, 128)).save(png)
    img, full_size, box = decode_frame(str(png), 32)
    assert box is None and img.size == full_size == (256, 128) and img.mode == "RGB"


@pytest.mark.parametrize("train", [True, False])
def test_reduced_decoding_stays_close_to_the_full_decode(tmp_path, train):
    """128 x 96 frames for a 32 px crop (35 px resize in train): decoded at 1/2 scale, only the window resampled.
    The DCT-domain halving keeps more detail below the new Nyquist frequency than PIL's antialiased bicubic:
    on this texture (hard edges, pixel noise) samples differ by 1.5-2 levels on average; a crop one pixel off
    differs by about 17."""
    ds = make_dataset(make_textured_root(tmp_path, 128, 96), train)
    errors = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            frames = ds[i]["frames"]
            assert frames.dtype == torch.uint8 and frames.shape == (3, 2, 32, 32)
            errors.append((frames_to_float(frames) - old_float_frames(ds, i)).abs().mean().item() * 255)
    assert max(errors) < 3.0, errors


# ------------------------------------------------------------------------------ epochs and persistent workers


def epoch_items(loader) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    items = {}
    for batch in loader:
        for j, index in enumerate(batch["index"].tolist()):
            items[index] = (batch["frames"][j], batch["audio"][j])
    return items


def test_persistent_workers_see_each_new_epoch_and_a_resumed_epoch_repeats(tmp_path):
    root = make_textured_root(tmp_path, 48, 40)
    loader = build_loader(make_dataset(root, train=True), loader_args(workers=2, batch=3), DistInfo(), train=True)
    assert loader.persistent_workers
    epochs = []
    for epoch in (0, 1):
        set_epoch(loader, epoch)
        epochs.append(epoch_items(loader))
    first, second = epochs
    assert sorted(first) == sorted(second) == list(range(6))
    assert all(not torch.equal(first[i][1], second[i][1]) for i in first)  # a new volume for every sample
    assert any(not torch.equal(first[i][0], second[i][0]) for i in first)  # and new crops, flips, centres

    resumed = build_loader(make_dataset(root, train=True), loader_args(workers=1, batch=3), DistInfo(), train=True)
    set_epoch(resumed, 1)
    again = epoch_items(resumed)
    assert all(torch.equal(again[i][0], second[i][0]) and torch.equal(again[i][1], second[i][1]) for i in second)


# ------------------------------------------------------------------------------------- decoding on the device


@pytest.mark.parametrize(("width", "height", "mean_levels"), [
    # libjpeg on both sides, PIL's two resize passes with 8-bit rounding in between; PIL's coefficients are
    # 22-bit fixed point, torch's float, so a value next to a rounding boundary may land one level apart
    (48, 40, 0.05),
    # the CPU path decodes these at 1/2 scale (the bound of the reduced-decoding test), the device path in full
    (128, 96, 3.0),
])
def test_decoding_on_the_device_matches_the_cpu_path(tmp_path, width, height, mean_levels):
    root = make_textured_root(tmp_path, width, height)
    for train in (True, False):
        on_cpu, deferred = make_dataset(root, train), make_dataset(root, train, defer_decode=True)
        for epoch in (0, 1):
            on_cpu.set_epoch(epoch)
            deferred.set_epoch(epoch)
            items = [on_cpu[i] for i in range(len(on_cpu))]
            reference, ref_audio, _ = to_device(collate_batch(items), CPU)
            jpeg_items = [deferred[i] for i in range(len(deferred))]
            assert all("frames" not in item for item in jpeg_items)
            frames, audio, labels = to_device(collate_batch(jpeg_items), CPU)
            assert frames.shape == reference.shape and frames.dtype == torch.float32
            diff = (frames - reference).abs() * 255
            assert diff.mean().item() < mean_levels, diff.mean().item()
            if width < 2 * 35:
                assert diff.max().item() < 1.01, diff.max().item()
            assert torch.equal(audio, ref_audio)  # the same random draws, in the same order


def test_decoding_on_the_device_names_the_bad_frame(tmp_path):
    root = make_textured_root(tmp_path, 48, 40)
    frame = root / "frames" / "cat_b" / "v1.mp4" / "000011.jpg"  # the first of frames 11 and 14
    data = frame.read_bytes()
    frame.write_bytes(data[:len(data) // 2])
    ds = make_dataset(root, train=False, defer_decode=True)
    with pytest.raises(DataError) as err:
        ds[4]
    assert str(err.value) == f"{root / 'test.csv'} line 5: frame {frame}: not a complete JPEG (no end-of-image marker)"
    # a bogus Huffman table: the header reads fine in the worker, the decoder on the device fails and names the frame
    bogus = bytearray(data)
    table = bogus.index(b"\xff\xc4")
    bogus[table + 5:table + 21] = b"\xff" * 16
    frame.write_bytes(bytes(bogus))
    batch = collate_batch([ds[3], ds[4]])
    with pytest.raises(DataError, match=rf"test.csv line 5: frame {frame}: cannot decode"):
        to_device(batch, CPU)


def test_decode_device_cuda_is_refused_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    parser = arguments.ArgParser("test").add_data_arguments()
    with pytest.raises(SystemExit):
        parser.parse(["--dataset", "synthetic", "--categories", "a,b", "--decode_device", "cuda"])
    assert "--decode_device cuda: no CUDA GPU is available" in capsys.readouterr().err
    args = parser.parse(["--dataset", "synthetic", "--categories", "a,b"])
    assert args.decode_device == "cpu"
    args.decode_device = "cuda"
    with pytest.raises(ValueError, match="--decode_device cuda decodes frames on the training GPU"):
        build_loader(None, args, DistInfo(), train=False)
