"""Learnability of sound-source localization: the class-trained `loc` head and the self-supervised `ssl` head
(EZ-VSL) against the centre prior and a random map, on two generated datasets built differently:

* ``embedded``: ``dataset/generators/synthetic.py`` (the generator of scripts/make_synthetic.py), its default clip mix
  (distractor objects, occlusions, noise bursts, off-screen sounds), objects placed anywhere;
* ``shapes-centred``: ``dataset/generators/shapes.py`` (scripts/make_shapes.py) with large objects
  (``--shapes_scale``, a fraction of the frame side) that sit near the centre with probability
  ``--shapes_centre_bias``: data on which the centre prior is strong.

Clips are rendered straight into the SoP layout (JPEG frames and wav; no video encoding, so no codec artefacts),
split per class into train / val / test, each model is trained by ``main_attack.py --mode train`` and its last
epoch evaluated clean by ``main_localization.py --boxes`` (LVS cIoU), once per training seed (``--train_seeds``).
Prints, per dataset, each model's clean accuracy, pointing (pooled over seeds and clips, Wilson interval; and per
seed), mean cIoU and AUC (bootstrap intervals over clips) next to the centre prior's, and whether the model beats
the centre prior in pointing (exact McNemar test on the pooled per-sample pairs).

    python bench/bench_localization.py --out /tmp/bench_loc --threads 1      (about 20 minutes on a busy 2-core CPU)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import main_attack  # noqa: E402
import main_localization  # noqa: E402
from dataset.generators import shapes, synthetic  # noqa: E402
from dataset.layout import audio_relpath, frame_name, frames_relpath  # noqa: E402
from evaluation.eval_dir import eval_folder_of  # noqa: E402
from evaluation.localization.metrics import auc  # noqa: E402
from evaluation.stats import format_fraction, mcnemar_exact  # noqa: E402
from models.registry import FUSION_HEADS  # noqa: E402
from training.engine import run_dir_of  # noqa: E402

AUDIO_RATE = 11025
Clip = tuple[np.ndarray, np.ndarray, dict]  # frames uint8 [T, H, W, 3], audio float32 [N], boxes.json entry


def write_clip(root: Path, cls: str, vid: str, frames: np.ndarray, audio: np.ndarray) -> str:
    """One clip in the SoP layout; returns its index row."""
    frame_dir = root / "frames" / cls / f"{vid}.mp4"
    frame_dir.mkdir(parents=True, exist_ok=True)
    for k, picture in enumerate(frames, start=1):
        Image.fromarray(picture).save(frame_dir / frame_name(k), quality=95)
    (root / "audio" / cls).mkdir(parents=True, exist_ok=True)
    sf.write(root / "audio" / cls / f"{vid}.wav", audio, AUDIO_RATE, subtype="FLOAT")
    return f"{audio_relpath(cls, vid)},{frames_relpath(cls, vid)},{len(frames)}"


def embedded_clips(args: argparse.Namespace) -> tuple[list[str], int, Callable[[int, int], Clip]]:
    config = synthetic.SynthConfig(num_classes=args.num_classes, per_class=args.per_class, seed=args.seed,
                                   size=args.size, duration=args.duration, fps=8, audio_rate=AUDIO_RATE)

    def render(c: int, v: int) -> Clip:
        spec_rng, video_rng, audio_rng = synthetic.clip_rngs(config.seed, c, v)
        spec = synthetic.make_spec(config, c, v, spec_rng)
        return (synthetic.render_video(spec, video_rng), synthetic.render_audio(spec, audio_rng),
                synthetic.spec_metadata(spec))

    return synthetic.class_names(args.num_classes), config.size, render


def shapes_clips(args: argparse.Namespace) -> tuple[list[str], int, Callable[[int, int], Clip]]:
    config = shapes.ShapesConfig(num_classes=args.num_classes, per_class=args.per_class, seed=args.seed,
                                         size=args.size, duration=args.duration, fps=8, audio_rate=AUDIO_RATE,
                                         object_scale=tuple(args.shapes_scale), centre_bias=args.shapes_centre_bias)
    return (shapes.class_names(args.num_classes), config.size,
            lambda c, v: shapes.render_clip(config, c, v))


DATASETS = {"embedded": embedded_clips, "shapes-centred": shapes_clips}


def build_dataset_root(root: Path, name: str, args: argparse.Namespace) -> Path:
    """Render the dataset into ``root`` (skipped when its boxes.json exists); returns the boxes.json path."""
    boxes = root / "boxes.json"
    if boxes.is_file():
        return boxes
    names, size, render = DATASETS[name](args)
    splits = ["train"] * args.train + ["val"] * args.val + ["test"] * (args.per_class - args.train - args.val)
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    videos = {}
    for c, cls in enumerate(names):
        for v, split in enumerate(splits):
            frames, audio, meta = render(c, v)
            vid = f"vid{v:04d}"
            rows[split].append(write_clip(root, cls, vid, frames, audio))
            videos[f"{cls}/{vid}"] = meta
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "categories.txt").write_text("\n".join(names) + "\n")
    boxes.write_text(json.dumps({"size": [size, size], "videos": videos}))
    return boxes


def model_flags(root: Path, ckpt: Path, head: str, seed: int, args: argparse.Namespace) -> list[str]:
    lr = str(args.lr)
    flags = ["--dataset", "synthetic", "--data_root", str(root), "--ckpt", str(ckpt), "--arch_classifier", head,
             "--arch_frame", args.arch_frame, "--frame_dim", str(args.dim), "--arch_sound", args.arch_sound,
             "--sound_dim", str(args.dim), "--imgSize", str(args.img_size), "--audLen", "8192",
             "--audRate", str(AUDIO_RATE), "--batch_size_per_gpu", str(args.batch_size), "--workers", "0",
             "--num_epoch", str(args.epochs),
             "--lr_steps", str(args.epochs * 2), "--lr_frame", lr, "--lr_sound", lr, "--lr_classifier", lr,
             "--optimizer", args.optimizer, "--weight_decay", str(args.weight_decay), "--seed", str(seed),
             "--id", f"seed{seed}", "--device", "cpu", "--frame_padding", args.frame_padding]
    if args.optimizer == "adamw":
        flags += ["--lr_schedule", "cosine", "--warmup_epochs", "1"]
    return flags


def per_sample(evaluation: Path) -> dict[str, np.ndarray]:
    """The clean evaluation's per-sample pointing and cIoU of the model and the centre prior, boxed samples only,
    in dataset order (so the seeds' runs line up sample by sample)."""
    data = np.load(evaluation / "per_sample.npz")
    order = np.argsort(data["index"])
    boxed = data["extra/has_box"][order].astype(bool)
    return {name: data[f"extra/{name}"][order][boxed] for name in
            ("clean_pointing", "clean_ciou", "prior_pointing", "prior_ciou")}


def train_and_localize(root: Path, boxes: Path, head: str, seed: int,
                       args: argparse.Namespace) -> tuple[dict, dict[str, np.ndarray], float]:
    flags = model_flags(root, Path(args.out) / "ckpt" / root.name, head, seed, args)
    init = ["--weights_frame", "simclr", "--pretrain_epochs", str(args.pretrain_epochs)] \
        if args.frame_init == "simclr" else []
    if getattr(FUSION_HEADS.get(head), "self_supervised", False):
        init += ["--ssl_uniformity", str(args.ssl_uniformity), "--ssl_vicreg", str(args.ssl_vicreg),
                 "--ssl_warmup_epochs", str(args.ssl_warmup_epochs), "--ssl_pitch_shift", str(args.ssl_pitch_shift)]
        if args.ssl_temperature is not None:
            flags += ["--ssl_temperature", str(args.ssl_temperature)]
        if args.ssl_momentum is not None:
            flags += ["--ssl_momentum", str(args.ssl_momentum)]
        if args.ssl_audio_bn:
            flags.append("--ssl_audio_bn")
    start = time.time()
    main_attack.main(["--mode", "train", "--overwrite", *flags, *init])  # a rerun measures again from scratch
    evaluation = [*flags, "--boxes", str(boxes), "--attack_type", "none", "--num_vis", "0", "--checkpoint", "latest"]
    main_localization.main(evaluation)
    out = eval_folder_of(Path(run_dir_of(main_attack.parse_args(flags))), "localization",
                         main_localization.parse_args(evaluation))
    return json.loads((out / "loc_results.json").read_text()), per_sample(out), time.time() - start


def bootstrap_interval(cious: np.ndarray, statistic: Callable[[np.ndarray], float], seed: int = 0,
                       resamples: int = 1000) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``statistic`` over the test clips (``cious [seeds, clips]``: clips are
    resampled, every seed's value of a drawn clip kept)."""
    rng = np.random.default_rng(seed)
    clips = cious.shape[1]
    values = [statistic(cious[:, rng.integers(0, clips, clips)]) for _ in range(resamples)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def mean_ciou(cious: np.ndarray) -> float:
    return float(cious.mean())


def pooled_auc(cious: np.ndarray) -> float:
    return auc(cious.ravel())


def summary_row(name: str, pointing: np.ndarray, cious: np.ndarray, prior_pointing: np.ndarray | None = None,
                acc: str = "", seconds: str = "") -> str:
    """One table row over every seed: pointing (pooled over seeds x clips, Wilson interval), mean cIoU and AUC (with
    bootstrap intervals over clips), and against the centre prior the exact McNemar test on the pooled pairs."""
    hits, n = int(pointing.sum()), pointing.size
    low, high = bootstrap_interval(cious, mean_ciou)
    auc_low, auc_high = bootstrap_interval(cious, pooled_auc)
    per_seed = " / ".join(f"{row.mean():.2f}" for row in pointing) if pointing.shape[0] > 1 else ""
    verdict = ""
    if prior_pointing is not None:
        test = mcnemar_exact(pointing.ravel(), prior_pointing.ravel())
        better = pointing.mean() > prior_pointing.mean()
        verdict = (f"{'yes' if better and test.p_value < 0.05 else 'no'}"
                   f"{', worse' if not better and test.p_value < 0.05 else ''} (p = {test.p_value:.2g})")
    return (f"| {name} | {acc} | {format_fraction(hits, n)} | {per_seed} | {mean_ciou(cious):.3f} "
            f"[{low:.3f}, {high:.3f}] | {pooled_auc(cious):.3f} [{auc_low:.3f}, {auc_high:.3f}] | {verdict} | "
            f"{seconds} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="work folder (datasets and runs; datasets are reused)")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--heads", nargs="+", default=["loc", "ssl"], help="fusion heads with a map to train")
    parser.add_argument("--num_classes", type=int, default=10,
                        help="classes (more classes: fewer same-class negatives in a contrastive batch)")
    parser.add_argument("--per_class", type=int, default=50, help="clips per class, split train / val / test")
    parser.add_argument("--train", type=int, default=35, help="training clips per class")
    parser.add_argument("--val", type=int, default=5, help="validation clips per class (the rest is test)")
    parser.add_argument("--size", type=int, default=96, help="generated frame side in pixels")
    parser.add_argument("--img_size", type=int, default=96, help="model input side (--imgSize)")
    parser.add_argument("--duration", type=float, default=2.0, help="clip length in seconds")
    parser.add_argument("--shapes_scale", type=float, nargs=2, default=[0.35, 0.6], metavar=("LO", "HI"),
                        help="shapes-centred: object side as a fraction of the frame side")
    parser.add_argument("--shapes_centre_bias", type=float, default=0.5,
                        help="shapes-centred: probability that an object sits near the centre")
    parser.add_argument("--arch_frame", choices=["smallcnn", "poolcnn"], default="smallcnn",
                        help="frame encoder: smallcnn (31 px receptive field) or poolcnn (77 px)")
    parser.add_argument("--dim", type=int, default=32, help="feature width of both encoders (--frame_dim, --sound_dim)")
    parser.add_argument("--batch_size", type=int, default=32, help="training batch (--batch_size_per_gpu)")
    parser.add_argument("--frame_padding", choices=["zeros", "reflect"], default="zeros",
                        help="border of the frame encoder's convolutions, for every head (--frame_padding)")
    parser.add_argument("--arch_sound", choices=["anet", "mel"], default="anet",
                        help="audio encoder: anet (raw waveform, the paper's) or mel (log-mel spectrogram)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw",
                        help="sgd (step schedule, no decay step inside the run) or adamw (cosine, 1 warm-up epoch)")
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate of every module")
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--frame_init", choices=["scratch", "simclr"], default="scratch",
                        help="frame encoder start: random, or SimCLR pretraining on the training frames "
                             "(--weights_frame simclr)")
    parser.add_argument("--pretrain_epochs", type=int, default=20, help="--frame_init simclr: its epochs")
    parser.add_argument("--ssl_uniformity", type=float, default=0.0,
                        help="self-supervised heads: --ssl_uniformity of their training (audio uniformity weight)")
    parser.add_argument("--ssl_vicreg", type=float, default=0.0,
                        help="self-supervised heads: --ssl_vicreg of their training (audio variance-covariance weight)")
    parser.add_argument("--ssl_pitch_shift", type=float, default=1.0,
                        help="self-supervised heads: --ssl_pitch_shift of their training (audio resampling factor)")
    parser.add_argument("--ssl_temperature", type=float, default=None,
                        help="self-supervised heads: their contrastive temperature (default: the head's published one)")
    parser.add_argument("--ssl_momentum", type=float, default=None,
                        help="momentum-target heads (ssl_slavc, ssl_slavc_enc): --ssl_momentum of their model")
    parser.add_argument("--ssl_audio_bn", action="store_true",
                        help="self-supervised heads: --ssl_audio_bn of their model (batch-normalised audio projection)")
    parser.add_argument("--ssl_warmup_epochs", type=int, default=0,
                        help="self-supervised heads: --ssl_warmup_epochs of their training (clip-level warm-up)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated datasets")
    parser.add_argument("--train_seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds; the figures pool every seed's per-sample outcomes")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if not (args.train > 0 and args.val > 0 and args.train + args.val < args.per_class):
        parser.error("--train and --val must be > 0 and leave test clips in --per_class")
    torch.set_num_threads(args.threads)
    report = []
    seeds = len(args.train_seeds)
    for name in args.datasets:
        root = Path(args.out) / name
        root.mkdir(parents=True, exist_ok=True)
        boxes = build_dataset_root(root, name, args)
        lines = [f"### {name}", "", "| map | clean acc (%) | pointing | pointing per seed | mean cIoU | AUC | beats "
                 "the centre prior in pointing (exact McNemar) | train + eval (s) |", "|---" * 8 + "|"]
        prior = None
        for head in args.heads:
            runs = [train_and_localize(root, boxes, head, seed, args) for seed in args.train_seeds]
            samples = [r[1] for r in runs]
            prior = samples[0]
            acc = f"{np.mean([r[0]['clean']['acc'] for r in runs]):.1f}"
            lines.append(summary_row(head, np.stack([s["clean_pointing"] for s in samples]),
                                     np.stack([s["clean_ciou"] for s in samples]),
                                     np.tile(prior["prior_pointing"], (seeds, 1)), acc,
                                     f"{sum(r[2] for r in runs):.0f}"))
        lines += [summary_row("centre prior", prior["prior_pointing"][None], prior["prior_ciou"][None]), "",
                  f"{prior['prior_pointing'].size} test clips with a box, {seeds} training seed(s) "
                  f"({' '.join(map(str, args.train_seeds))}): pointing pooled over seeds x clips with a Wilson 95 % "
                  "interval, mean cIoU and AUC (LVS convention) with 95 % bootstrap intervals over the clips.", ""]
        report += lines
        print("\n".join(lines), flush=True)
    print("\n".join(["", "## bench_localization: " + " ".join(sys.argv[1:] if argv is None else argv), ""] + report))


if __name__ == "__main__":
    main()
