"""Sound-source visual localization, clean and under multimodal attacks.

    python main_localization.py --dataset synthetic --arch_classifier ssl ... --boxes DIR/boxes.json
    python main_localization.py <the run's flags> --list_test ROOT/test.csv --audio_path ROOT/audio \
        --frame_path ROOT/frames --boxes Flickr-SoundNet/Annotations   (or --boxes vggss.json; see the README)
    python main_localization.py --dataset MUSIC --arch_classifier loc ...        (real data: no boxes)

Takes the flags the model was trained with (main_attack.py --mode train) plus the attack flags of
main_attack.py --mode eval, loads the run's best checkpoint and evaluates the head's localization map
(--arch_classifier loc or attention, trained with labels; ssl or ssl_lvs, the self-supervised localizers) on
the test split. With --boxes (a synthetic dataset's boxes.json, a Flickr-SoundNet annotation folder or the
VGG-Sound Sources box file) it reports the pointing game, cIoU@0.5, mean cIoU and AUC against the annotated
boxes (cIoU in the published LVS convention by default, --ciou_mode), next to the centre prior and a random
map, with 95 % intervals and whether the model beats the centre prior (exact McNemar test); without it, how
far the map moves under attack. Three attack objectives (--loc_attack): 'class', the untargeted attack on the
label; 'map', which pushes the map's mass out of the box; 'corr', which lowers the audio-visual similarity in
the box and raises it elsewhere; per budget, the per-sample worst case over all of them.

Writes RUN/evals/localization_<boxes>_<objectives>_<attacks and budgets>/ (or --eval_name; listed in
RUN/evals/index.json, never silently replaced): eval.json (the command), loc_results.json, per_sample.npz,
loc_table.md, ciou_vs_eps.png and index.html (map overlays, clean beside adversarial). ``--run RUN`` reads the
run's training flags.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import ArgParser
from dataset.annotations import AnnotationError, GroundTruth, load_ground_truth
from dataset.av_dataset import AVDataset
from dataset.index import DataError
from dataset.layout import frame_name
from dataset.loaders import build_dataset, build_loader
from evaluation.eval_dir import eval_folder_of, evaluation_folder
from evaluation.localization.evaluate import DEFAULT_OBJECTIVES, MAP_HEADS, OBJECTIVES, evaluate_localization
from evaluation.localization.metrics import CIOU_CONVENTIONS, DEFAULT_CIOU_MODE
from evaluation.localization.report import loc_table_markdown, write_loc_outputs
from evaluation.robustness.protocol import budgets_from_args
from models import FUSION_HEADS
from training.checkpoint import load_checkpoint, model_meta
from training.engine import create_model, load_best, run_dir_of, run_entry_point
from utils.distributed import DistInfo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    builder = (ArgParser(__doc__, Path(__file__).name).add_run_arguments(["eval"]).add_data_arguments()
               .add_model_arguments()
               .add_train_arguments().add_attack_arguments())
    g = builder.parser.add_argument_group("localization")
    g.add_argument("--boxes", default=None, metavar="PATH",
                   help="ground-truth boxes: a synthetic dataset's boxes.json (scripts/make_synthetic.py), a "
                        "Flickr-SoundNet annotation folder (<id>.xml) or the VGG-Sound Sources box file (JSON "
                        "list); default: none, real-data mode (change of the map under attack)")
    g.add_argument("--loc_attack", nargs="+", choices=OBJECTIVES, default=list(DEFAULT_OBJECTIVES),
                   help="attack objectives: 'class' (untargeted, --attack_loss), 'map' (maximise the map's "
                        "mass outside the box; without boxes, outside the clean map's top region) and 'corr' "
                        "(lower the audio-visual similarity inside that region, raise it outside)")
    g.add_argument("--checkpoint", choices=["best", "latest"], default="best",
                   help="which checkpoint of the run to evaluate: 'best' (highest validation accuracy; for the "
                        "self-supervised heads that is the linear probe's, which can peak epochs before the "
                        "localization does) or 'latest' (the last epoch trained)")
    g.add_argument("--ciou_mode", choices=sorted(CIOU_CONVENTIONS), default=DEFAULT_CIOU_MODE,
                   help="cIoU convention: 'lvs' (the published one: the map above its median against the boxes, "
                        "Chen et al. 2021) or 'threshold0.5' (the min-max normalised map >= 0.5; not comparable "
                        "with the literature)")
    args = builder.parse(argv)
    head = FUSION_HEADS.get(args.arch_classifier)
    if not (head.needs_fmap and callable(getattr(head, "attention", None)) and "audio" in head.modalities):
        builder.parser.error(f"--arch_classifier {args.arch_classifier} has no localization map; use {MAP_HEADS}")
    if args.boxes is not None and not Path(args.boxes).exists():
        builder.parser.error(f"--boxes: no such file or folder: {args.boxes}")
    args.loc_attack = list(dict.fromkeys(args.loc_attack))
    return args


def load_boxes(path: str, dataset: AVDataset, list_test: str) -> GroundTruth:
    """``--boxes`` read, with the frame size of every annotated test sample of a benchmark (from its first frame
    on disk: the boxes follow the eval transform of that frame)."""
    try:
        boxes = load_ground_truth(path)
    except AnnotationError as err:
        raise DataError(f"--boxes: {err}") from None
    annotated = [row for row in dataset.rows if boxes.covers(row.info)]
    if not annotated:
        match = "sample id <class>/<id>" if boxes.keyed_by_sample else "video id, the <id> of <class>/<id>"
        raise DataError(f"--boxes: none of the {len(dataset)} test samples of {list_test} has a box in {path} "
                        f"({boxes.source} format; samples match by {match})")
    if not boxes.keyed_by_sample:
        seen: dict[str, str] = {}
        for row in annotated:
            key = boxes.key_of(row.info)
            if key in seen:
                raise DataError(f"--boxes: {boxes.source} boxes are matched by video id, and test samples {seen[key]} "
                                f"and {row.info} share the id {key}; give every video a unique id")
            seen[key] = row.info
    if boxes.default_frame_size is None:
        sizes = {}
        for row in annotated:
            frame = Path(dataset.frame_path, row.frames_rel.lstrip("/"), frame_name(1))
            try:
                with Image.open(frame) as image:
                    width, height = image.size
            except OSError as err:
                raise DataError(f"{row.where}: cannot read the frame size of {frame} for --boxes ({err})") from None
            sizes[row.info] = (height, width)
        boxes = boxes.with_frame_sizes(sizes)
    return boxes


def evaluate_run(args: argparse.Namespace, info: DistInfo) -> dict | None:
    """The run's best checkpoint on the test split; writes and prints the results on rank 0 (None when an
    identical finished evaluation is reused)."""
    with evaluation_folder(run_dir_of(args), "localization", args, info) as out_dir:
        return None if out_dir is None else _evaluate_into(out_dir, args, info)


def _evaluate_into(out_dir: Path, args: argparse.Namespace, info: DistInfo) -> dict:
    if args.checkpoint == "best":
        model, epoch = load_best(args, info)
    else:
        model = create_model(args, info, init_weights=False)
        epoch = load_checkpoint(run_dir_of(args), model, "latest", model_meta(args))
    dataset = build_dataset(args, "test")
    boxes = None if args.boxes is None else load_boxes(args.boxes, dataset, args.list_test)
    loader = build_loader(dataset, args, info, train=False)
    results, records, vis = evaluate_localization(model, loader, args, info, budgets_from_args(args),
                                                  args.attack_type, args.loc_attack, boxes, args.num_vis)
    results.update(epoch=epoch, checkpoint=args.checkpoint)
    if info.is_main:
        written = write_loc_outputs(out_dir, results, vis, args.categories)
        records.save(out_dir / "per_sample.npz")
        written.append(out_dir / "per_sample.npz")
        print(loc_table_markdown(results))
        print("wrote " + ", ".join(str(p) for p in written))
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.print_eval_dir:
        print(eval_folder_of(run_dir_of(args), "localization", args))
        return
    run_entry_point(args, evaluate_run)


if __name__ == "__main__":
    main()
