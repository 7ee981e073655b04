"""Learnability on the CPU: the CPU recipe against a plain reference CNN, on two generated datasets
(figures, not pass/fail).

    python bench/bench_learn.py [--per_class 50] [--epochs 15] [--recipe_epochs 25] [--threads 2] [--seed 0]

Datasets, rendered in memory at 112 px / 11025 Hz (no video encoding), split per class 60 / 40 into train /
test:

* embedded: dataset/generators/synthetic.py as the demo makes it (6 classes, distractors, occlusion, noise bursts);
* shapes: dataset/generators/shapes.py (10 classes; PIL polygons 35-70 px on fractal noise, short synthesised
  sound events at -12...20 dB SNR), built unlike the embedded generator.

Models, each trained on the centre frame / the 16384-sample audio window around it, batch 16:

* recipe: the CPU recipe: poolcnn 128 (visual) or mel 128 (audio) through the project's own optimiser and
  schedule code (AdamW, learning rates 1e-3 frame / 1e-2 sound / 1e-2 head, weight decay 0.01, cosine with 1
  warm-up epoch, label smoothing 0.1), for ``--recipe_epochs`` (it costs less per epoch than the reference), and
  the
  loader's training augmentation (crop, flip / volume);
* reference: a plain CNN, four blocks of 3x3 conv (padding 1), BN, ReLU and 2x2 max-pool, global
  max-pool, linear; Adam 1e-3, no augmentation; on the frame, or on the same log-mel spectrogram as mel;
* demo-sgd: what the demo trained before (smallcnn 128 / anet 128, SGD lr 0.01, momentum 0.9, x0.1 at 11/15).

Test accuracy after the last epoch, and the training time: wall seconds and this process's CPU seconds (all
threads; on a shared machine the wall time also counts the other processes' turns, the CPU time does not).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from dataset.generators import shapes, synthetic
from dataset.transforms import frames_to_float, transform_audio, transform_frames
from models import build_model
from models.audio import MelNet
from training.engine import build_optimizer, build_scheduler
from training.objectives import CrossEntropy

IMG_SIZE, AUD_LEN, AUD_RATE, FPS, DURATION, BATCH = 112, 16384, 11025, 8, 3.0, 16


@dataclass
class Split:
    frames: np.ndarray  # uint8 [N, H, W, 3], the centre frame
    audio: np.ndarray  # float32 [N, AUD_LEN], the window around it
    labels: np.ndarray  # int64 [N]


def centre_window(audio: np.ndarray) -> np.ndarray:
    start = (len(audio) - AUD_LEN) // 2
    return audio[start:start + AUD_LEN]


def embedded_clip(config: synthetic.SynthConfig, c: int, v: int) -> tuple[np.ndarray, np.ndarray]:
    spec_rng, video_rng, audio_rng = synthetic.clip_rngs(config.seed, c, v)
    spec = synthetic.make_spec(config, c, v, spec_rng)
    frames = synthetic.render_video(spec, video_rng)
    return frames[len(frames) // 2], centre_window(synthetic.render_audio(spec, audio_rng))


def shapes_clip(config: shapes.ShapesConfig, c: int, v: int) -> tuple[np.ndarray, np.ndarray]:
    frames, audio, _ = shapes.render_clip(config, c, v)
    return frames[len(frames) // 2], centre_window(audio)


def make_splits(name: str, per_class: int, seed: int) -> tuple[Split, Split, int]:
    if name == "embedded":
        num_classes = 6
        config = synthetic.SynthConfig(num_classes=num_classes, per_class=per_class, seed=seed, size=IMG_SIZE,
                                       duration=DURATION, fps=FPS, audio_rate=AUD_RATE)
        clip = embedded_clip
    else:
        num_classes = 10
        config = shapes.ShapesConfig(num_classes=num_classes, per_class=per_class, seed=seed, size=IMG_SIZE,
                                             duration=DURATION, fps=FPS, audio_rate=AUD_RATE)
        clip = shapes_clip
    n_train = round(0.6 * per_class)
    parts: dict[str, list] = {"train": [], "test": []}
    for c in range(num_classes):
        for v in range(per_class):
            frame, audio = clip(config, c, v)
            parts["train" if v < n_train else "test"].append((frame, audio, c))

    def stack(items: list) -> Split:
        return Split(np.stack([i[0] for i in items]), np.stack([i[1] for i in items]).astype(np.float32),
                     np.array([i[2] for i in items], np.int64))

    return stack(parts["train"]), stack(parts["test"]), num_classes


# ---------------------------------------------------------------------------------------------- models


class PlainCNN(nn.Module):
    """The plain reference CNN: 4 x (conv3x3 pad 1, BN, ReLU, maxpool 2x2), global max-pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_channels = width
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).amax(dim=(-2, -1)))


class Reference(nn.Module):
    """PlainCNN on the frame (in [0, 1], centred) or on the log-mel spectrogram of the mel encoder."""

    def __init__(self, modality: str, num_classes: int) -> None:
        super().__init__()
        self.modality = modality
        self.mel = MelNet(AUD_RATE, 1022, 256, 8) if modality == "audio" else None  # its front end only
        self.cnn = PlainCNN(3 if modality == "visual" else 1, num_classes)

    def forward(self, frames: Tensor, audio: Tensor) -> Tensor:
        if self.modality == "visual":
            return self.cnn((frames[:, :, 0] - 0.45) / 0.25)
        return self.cnn(self.mel.spectrogram(audio).unsqueeze(1))


def batches(split: Split, rng: np.random.Generator, augment: bool, shuffle: bool):
    order = rng.permutation(len(split.labels)) if shuffle else np.arange(len(split.labels))
    for start in range(0, len(order), BATCH):
        idx = order[start:start + BATCH]
        if augment:
            frames = frames_to_float(torch.stack([transform_frames([Image.fromarray(split.frames[i])], IMG_SIZE,
                                                                   True, rng) for i in idx]))
            audio = torch.stack([transform_audio(split.audio[i], True, rng) for i in idx])
        else:
            frames = torch.from_numpy(split.frames[idx]).permute(0, 3, 1, 2).unsqueeze(2).float() / 255
            audio = torch.from_numpy(split.audio[idx]).unsqueeze(1)
        yield frames.contiguous(), audio, torch.from_numpy(split.labels[idx])


def recipe_args(model_kind: str, epochs: int) -> argparse.Namespace:
    if model_kind == "recipe":
        return argparse.Namespace(optimizer="adamw", lr_frame=1e-3, lr_sound=1e-2, lr_classifier=1e-2, beta1=0.9,
                                  weight_decay=0.01, lr_schedule="cosine", warmup_epochs=1, lr_steps=[],
                                  num_epoch=epochs, label_smoothing=0.1)
    return argparse.Namespace(optimizer="sgd", lr_frame=0.01, lr_sound=0.01, lr_classifier=0.01, beta1=0.9,
                              weight_decay=1e-4, lr_schedule="step", warmup_epochs=0,
                              lr_steps=[round(epochs * 11 / 15)], num_epoch=epochs, label_smoothing=0.0)


def run(model_kind: str, modality: str, train: Split, test: Split, num_classes: int, epochs: int,
        seed: int) -> tuple[float, float, float]:
    """(test accuracy %, training wall seconds, training CPU seconds of this process) of one model."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if model_kind == "reference":
        model = Reference(modality, num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler, criterion, augment = None, CrossEntropy(), False

        def logits_of(frames: Tensor, audio: Tensor) -> Tensor:
            return model(frames, audio)
    else:
        frame_net, sound_net = ("poolcnn", "mel") if model_kind == "recipe" else ("smallcnn", "anet")
        model = build_model(frame_net, sound_net, modality, num_classes, frame_dim=128, sound_dim=128)
        args = recipe_args(model_kind, epochs)
        optimizer, augment = build_optimizer(model, args), True
        scheduler = build_scheduler(optimizer, args)
        criterion = CrossEntropy()
        criterion.label_smoothing = args.label_smoothing

        def logits_of(frames: Tensor, audio: Tensor) -> Tensor:
            return model(frames, audio).logits
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        model.train()
        for frames, audio, labels in batches(train, rng, augment, shuffle=True):
            loss = F.cross_entropy(logits_of(frames, audio), labels, label_smoothing=criterion.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    correct = 0
    with torch.no_grad():
        for frames, audio, labels in batches(test, rng, augment=False, shuffle=False):
            correct += int((logits_of(frames, audio).argmax(1) == labels).sum())
    return 100 * correct / len(test.labels), seconds, cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per_class", type=int, default=50, help="clips per class (60 %% train, 40 %% test)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of the reference and demo-sgd models")
    parser.add_argument("--recipe_epochs", type=int, default=25, help="epochs of the CPU recipe")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", nargs="+", choices=["embedded", "shapes"], default=["embedded", "shapes"])
    parser.add_argument("--models", nargs="+", choices=["recipe", "reference", "demo-sgd"],
                        default=["recipe", "reference", "demo-sgd"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.per_class} clips/class, {args.epochs} epochs ({args.recipe_epochs} for the recipe), batch {BATCH}, "
          f"{args.threads} threads, "
          f"{IMG_SIZE} px, {AUD_LEN} samples")
    print(f"{'dataset':<9} {'modality':<7} {'model':<10} {'encoder':<14} {'epochs':>6} {'test acc %':>10} "
          f"{'train s':>8} {'cpu s':>8}")
    encoders = {("recipe", "visual"): "poolcnn128", ("recipe", "audio"): "mel128",
                ("reference", "visual"): "plain4 frame", ("reference", "audio"): "plain4 log-mel",
                ("demo-sgd", "visual"): "smallcnn128", ("demo-sgd", "audio"): "anet128"}
    for name in args.datasets:
        start = time.perf_counter()
        train, test, num_classes = make_splits(name, args.per_class, args.seed)
        print(f"# {name}: {num_classes} classes, {len(train.labels)} train / {len(test.labels)} test clips, "
              f"rendered in {time.perf_counter() - start:.0f} s", flush=True)
        for modality in ("visual", "audio"):
            for kind in args.models:
                epochs = args.recipe_epochs if kind == "recipe" else args.epochs
                acc, seconds, cpu = run(kind, modality, train, test, num_classes, epochs, args.seed)
                print(f"{name:<9} {modality:<7} {kind:<10} {encoders[kind, modality]:<14} {epochs:>6} {acc:>10.1f} "
                      f"{seconds:>8.1f} {cpu:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
