"""Sound-source localization: metrics on hand-made maps, the box mapping, the `loc` head's map, and a briefly
trained `loc` model through main_attack.py (train) and main_localization.py (eval) on rendered synthetic clips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main_attack
import main_localization
from dataset.boxes import Boxes, box_masks, box_to_input
from dataset.generators.synthetic import SynthConfig, class_names
from dataset.transforms import transform_frames
from evaluation.eval_dir import eval_folder_of
from evaluation.localization.evaluate import localization_maps, map_head, outside_mass_loss
from evaluation.localization.metrics import (
    CIOU_LVS,
    CIOU_THRESHOLD05,
    auc,
    center_prior_maps,
    ciou,
    mask_iou,
    median_masks,
    peak_locations,
    pointing_hits,
    top_mass_masks,
)
from evaluation.localization.report import loc_table_markdown, write_loc_outputs
from models import build_model
from tests.sop_fixture import write_rendered_clip
from training.engine import run_dir_of

ODD_CLASS = "odd&'<b>class"  # a class name that must be escaped in HTML and sanitised in file names


pytestmark = pytest.mark.usefixtures("one_thread")


def box_mask(x0: float, y0: float, x1: float, y1: float, size: int = 8) -> torch.Tensor:
    return box_masks(torch.tensor([[x0, y0, x1, y1]]), size, size)


# ------------------------------------------------------------------------------------------- metrics


def ramp(size: int = 8) -> torch.Tensor:
    """A ``[1, size, size]`` map rising in raster order (0 at the top left, size² - 1 at the bottom right)."""
    return torch.arange(size * size, dtype=torch.float32).view(1, size, size)


def test_lvs_ciou_is_one_when_the_above_median_half_is_the_box() -> None:
    top_half = box_mask(0, 0, 8, 4)  # rows 0-3: 32 of the 64 pixels
    falling = 63 - ramp()  # distinct values, the 32 highest in rows 0-3
    binary = top_half.float()  # ties: 32 ones, 32 zeros; the (lower) median is 0
    assert median_masks(falling).equal(top_half) and median_masks(binary).equal(top_half)
    torch.testing.assert_close(ciou(torch.cat([falling, binary]), top_half.expand(2, 8, 8)), torch.ones(2))
    # the pixels above the median are unchanged by any increasing rescaling (e.g. min-max normalisation)
    assert ciou(3 * falling - 7, top_half).item() == 1.0


def test_lvs_ciou_of_a_map_peaked_away_from_the_box() -> None:
    # the ramp peaks at the bottom right; above its median: rows 4-7 (32 pixels)
    box = box_mask(2, 2, 6, 6)  # rows and columns 2-5: 16 pixels, 8 of them (rows 4-5) in the prediction
    assert ciou(ramp(), box).item() == pytest.approx(8 / (16 + (32 - 8)))  # 0.2
    corner = box_mask(0, 0, 4, 4)  # the top left: no overlap
    assert ciou(ramp(), corner).item() == 0.0
    assert ciou(ramp(), corner, mode=CIOU_THRESHOLD05).item() == 0.0


def test_lvs_denominator_counts_the_predicted_pixels_outside_the_box() -> None:
    box = box_mask(0, 0, 8, 2)  # rows 0-1: 16 pixels, all inside the predicted rows 0-3
    falling = 63 - ramp()
    assert ciou(falling, box).item() == pytest.approx(16 / (16 + 16))  # 16 predicted pixels outside the box
    big_box = box_mask(0, 0, 8, 6)  # rows 0-5: 48 pixels, the 32 predicted ones all inside
    assert ciou(falling, big_box).item() == pytest.approx(32 / (48 + 0))


def test_lvs_leaves_pixels_tied_with_the_median_out() -> None:
    box = box_mask(2, 2, 6, 6)
    small_blob = box.float()  # 16 ones among 64 pixels: the median is 0, so exactly the box is predicted
    assert ciou(small_blob, box).item() == 1.0
    assert ciou(torch.full((1, 8, 8), 0.3), box).item() == 0.0  # a constant map predicts nothing
    assert median_masks(torch.full((1, 8, 8), 0.3)).sum().item() == 0


def test_fixed_threshold_convention_keeps_its_values_and_pointing_is_unchanged() -> None:
    target = box_mask(2, 2, 6, 6).expand(3, 8, 8)  # 16 pixels
    maps = torch.zeros(3, 8, 8)
    maps[0, 2:6, 2:6] = 1.0  # exactly the box
    maps[1, 2:6, 4:8] = 1.0  # shifted right by 2: 8 of 24 pixels shared, peak (first max) at (2, 4) inside
    maps[2, 0, 0] = 1.0  # a peak outside the box
    assert pointing_hits(maps, target).tolist() == [True, True, False]
    torch.testing.assert_close(ciou(maps[:2], target[:2], mode=CIOU_THRESHOLD05), torch.tensor([1.0, 1 / 3]))
    # every pixel >= 0.5 after min-max normalisation: a map of 0.5 to 1 inside the box only
    graded = torch.zeros(1, 8, 8)
    graded[0, 2:6, 2:6] = torch.linspace(0.5, 1.0, 16).view(4, 4)
    assert ciou(graded, target[:1], mode=CIOU_THRESHOLD05).item() == 1.0
    assert ciou(maps[2:], target[2:], mode=CIOU_THRESHOLD05).item() == 0.0
    # the ramp normalised: pixel k is k / 63, >= 0.5 from k = 32 on, the same rows 4-7 as its median mask
    assert ciou(ramp(), box_mask(2, 2, 6, 6), mode=CIOU_THRESHOLD05).item() == pytest.approx(8 / 40)
    # the two conventions differ on the shifted map: its median is 0, so LVS predicts its 16 ones only
    assert ciou(maps[1:2], target[1:2], mode=CIOU_LVS).item() == pytest.approx(8 / (16 + 8))


def test_ciou_refuses_bad_input() -> None:
    box = box_mask(2, 2, 6, 6)
    with pytest.raises(ValueError, match="unknown cIoU mode"):
        ciou(ramp(), box, mode="median")
    with pytest.raises(ValueError, match="boolean box masks of one shape"):
        ciou(ramp(), box.float())
    with pytest.raises(ValueError, match="boolean box masks of one shape"):
        ciou(ramp(4), box)
    with pytest.raises(ValueError, match="NaN"):
        ciou(torch.full((1, 8, 8), float("nan")), box)


def test_auc_of_known_cious() -> None:
    # success rate 1 at t = 0, 2/3 up to 1/3, 1/3 up to 1; trapezoids over 0, 0.05, ..., 1
    assert auc([1.0, 1 / 3, 0.0]) == pytest.approx(0.05 * (5 / 6 + 5 * 2 / 3 + 1 / 2 + 13 / 3))
    # success rate 1 for t <= 0.2 (5 points), 1/2 for 0.25 <= t <= 0.5 (6 points), 0 above (10 points)
    assert auc([0.5, 0.2]) == pytest.approx(0.05 * (4 * 1 + (1 + 0.5) / 2 + 5 * 0.5 + 0.5 / 2))
    assert auc([1.0, 1.0]) == pytest.approx(1.0)
    assert auc([0.0]) == pytest.approx(0.025)


# -------------------------------------------------------------------------------------------- report


def hand_made_results(**top) -> dict:
    """A results dict as the localization loop writes it: 263 samples, 29 with a box."""
    attack = {"objective": "map", "attack": "pgd", "budget": "V", "eps_visual": 1.0, "eps_audio": 0.0,
              "grid": False, "seconds": 2.0, "acc": 100 * 81 / 263, "pointing": 0 / 29, "ciou": 1 / 29,
              "miou": 0.1, "auc": 0.2, "num_boxed": 29, "map_iou_top_mass": 0.4, "map_iou_threshold": 0.3,
              "peak_shift_px": 5.0, "peak_shift_frac": 0.1}
    return {"run": "hand-made", "num_samples": 263, "num_boxed": 29, "map_size": [6, 6], "input_size": 96,
            "eps_units": "pixel", "attack_steps": 3, "attack_loss": "ce", "attacks": [attack],
            "clean": {"acc": 100 * 81 / 263, "pointing": 1 / 29, "ciou": 0 / 29, "miou": 0.3, "auc": 0.4,
                      "num_boxed": 29},
            "center_prior": {"pointing": 1 / 29, "ciou": 1 / 29, "miou": 0.2, "auc": 0.3, "num_boxed": 29},
            **top}


def table_rows(table: str) -> dict[str, list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[2]: row[3:] for row in rows[2:]}  # budget column -> the metric cells


def test_table_prints_proportions_with_wilson_intervals_and_names_the_convention() -> None:
    table = loc_table_markdown(hand_made_results())
    assert "(cIoU convention: lvs)" in table and "above the map's median" in table
    header = next(line for line in table.splitlines() if line.startswith("| objective"))
    assert "| acc (%) | pointing | cIoU@0.5 | mean cIoU | AUC |" in header
    rows = table_rows(table)
    # Newcombe (1998): 81/263 -> [0.2553, 0.3662], 1/29 -> [0.0061, 0.1718]; 0/29 -> [0, z² / (29 + z²)]
    assert rows["clean"][:3] == ["30.80 [25.5, 36.6]", "0.034 [0.006, 0.172]", "0.000 [0.000, 0.117]"]
    assert rows["centre prior"][:3] == ["", "0.034 [0.006, 0.172]", "0.034 [0.006, 0.172]"]
    assert rows["V (εv=1)"][:3] == ["30.80 [25.5, 36.6]", "0.000 [0.000, 0.117]", "0.034 [0.006, 0.172]"]
    assert rows["V (εv=1)"][3:] == ["0.100", "0.200", "0.400", "0.300", "5.0"]
    fixed = loc_table_markdown(hand_made_results(ciou_mode=CIOU_THRESHOLD05))
    assert "(cIoU convention: threshold0.5)" in fixed and "above the map's median" not in fixed
    with pytest.raises(ValueError, match="unknown ciou_mode"):
        loc_table_markdown(hand_made_results(ciou_mode="median"))


def test_table_prefers_the_loops_counts_and_refuses_fractions_of_no_count() -> None:
    results = hand_made_results()
    results["clean"].update(num_correct=0, pointing_hits=29)  # counts win over the stored fractions
    rows = table_rows(loc_table_markdown(results))
    assert rows["clean"][:2] == ["0.00 [0.0, 1.4]", "1.000 [0.883, 1.000]"]
    results = hand_made_results()
    results["clean"]["ciou"] = 0.5  # not k / 29
    with pytest.raises(ValueError, match="not a whole number of the 29 samples"):
        loc_table_markdown(results)


def test_outputs_of_a_run_without_boxes(tmp_path: Path) -> None:
    results = hand_made_results(num_boxed=0)
    del results["center_prior"]
    for values in (results["clean"], results["attacks"][0]):
        for key in ("pointing", "ciou", "miou", "auc", "num_boxed"):
            values.pop(key)
    written = write_loc_outputs(tmp_path, results, [], ["a", "b"])
    table = written[1].read_text()
    assert "| pointing |" not in table and "cIoU convention" in table
    assert table_rows(table)["V (εv=1)"] == ["30.80 [25.5, 36.6]", "0.400", "0.300", "5.0"]
    assert json.loads(written[0].read_text()) == results
    assert written[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_top_mass_regions_iou_and_peak_shift() -> None:
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 3, 3] = 0.5, 0.3, 0.2
    assert top_mass_masks(maps, 0.2).nonzero().tolist() == [[0, 0, 0]]
    assert top_mass_masks(maps, 0.6).nonzero().tolist() == [[0, 0, 0], [0, 0, 1]]
    moved = torch.zeros(1, 4, 4)
    moved[0, 0, 1], moved[0, 3, 3] = 0.7, 0.3
    assert mask_iou(top_mass_masks(maps, 0.6), top_mass_masks(moved, 0.6)).item() == pytest.approx(1 / 2)
    assert mask_iou(torch.zeros(1, 2, 2, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool)).item() == 1.0
    assert (peak_locations(moved) - peak_locations(maps)).norm().item() == pytest.approx(1.0)
    assert peak_locations(maps).tolist() == [[0.5, 0.5]]
    prior = center_prior_maps(2, 8, 8)
    assert pointing_hits(prior, box_mask(3, 3, 5, 5).expand(2, 8, 8)).all()


@pytest.mark.parametrize(("frame_size", "img_size", "box"), [
    ((64, 64), 32, (10, 20, 30, 40)),
    ((48, 64), 32, (2, 8, 30, 40)),  # wider than high: resize to 32 x 43, crop 5 px off the left
    ((64, 48), 40, (6, 3, 40, 30)),  # higher than wide: resize to 53 x 40, crop 6 px off the top
    ((64, 64), 64, (0, 0, 64, 17)),  # no resize
])
def test_boxes_follow_the_eval_transform(frame_size, img_size, box) -> None:
    height, width = frame_size
    picture = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = box
    picture[y0:y1, x0:x1] = 255
    frames = transform_frames([Image.fromarray(picture)], img_size, train=False)
    bright = frames[0, 0] > 127
    rows, cols = bright.any(dim=1).nonzero().flatten(), bright.any(dim=0).nonzero().flatten()
    mapped = box_to_input(box, frame_size, img_size)
    mask = box_masks(torch.tensor([mapped]), img_size, img_size)[0]
    m_rows, m_cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
    for got, want in ((m_rows, rows), (m_cols, cols)):
        assert abs(int(got[0]) - int(want[0])) <= 1 and abs(int(got[-1]) - int(want[-1])) <= 1
    assert mask_iou(mask[None], bright[None]).item() > 0.7
    if frame_size == (64, 64) and img_size == 32:
        assert mapped == (5.0, 10.0, 15.0, 20.0)  # a square frame is a pure scale


def test_boxes_json_is_read_and_unknown_samples_have_no_box(tmp_path: Path) -> None:
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"size": [64, 64], "videos": {"a/v0": {"label": 0, "box": [8, 8, 24, 40]}}}))
    boxes = Boxes.load(path)
    masks, has_box = boxes.input_masks(["a/v0", "a/missing"], 32)
    assert has_box.tolist() == [True, False]
    assert masks[0].sum().item() == 8 * 16 and masks[1].sum().item() == 0
    (tmp_path / "bad.json").write_text(json.dumps({"videos": {}}))
    with pytest.raises(ValueError, match="not a boxes.json"):
        Boxes.load(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------- the map


@pytest.mark.parametrize("head", ["loc", "attention"])
def test_map_has_the_frames_aspect_and_sums_to_one(head: str) -> None:
    torch.manual_seed(0)
    model = build_model("smallcnn", "anet", head, cls_num=3, frame_dim=16, sound_dim=16).eval()
    frames, audio = torch.rand(2, 3, 1, 64, 96), torch.rand(2, 1, 2048) * 2 - 1
    out = model(frames, audio)
    maps = map_head(model).attention(out.feat_a, out.fmap_v)
    assert maps.shape == (2, 4, 6) == out.fmap_v.shape[:1] + out.fmap_v.shape[2:]
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(2))
    torch.testing.assert_close(maps.detach(), model.net_classifier.last_map)
    assert localization_maps(model.net_classifier, out, (64, 96)).shape == (2, 64, 96)


def test_sigmoid_map_is_per_location_and_the_default_build_works() -> None:
    assert build_model(arch_classifier="loc", cls_num=3).net_classifier.map_activation == "softmax"
    model = build_model("smallcnn", "anet", "loc", cls_num=3, frame_dim=16, sound_dim=16,
                        map_activation="sigmoid").eval()
    frames, audio = torch.rand(2, 3, 1, 64, 64), torch.rand(2, 1, 2048) * 2 - 1
    out = model(frames, audio)
    maps = model.net_classifier.attention(out.feat_a, out.fmap_v)
    assert maps.shape == (2, 4, 4) and ((maps > 0) & (maps < 1)).all()
    assert not torch.allclose(maps.sum(dim=(1, 2)), torch.ones(2))
    with pytest.raises(ValueError, match="map_activation"):
        build_model("smallcnn", "anet", "loc", cls_num=3, frame_dim=16, map_activation="relu")
    with pytest.raises(ValueError, match="no localization map"):
        map_head(build_model("smallcnn", "anet", "concat", cls_num=3, frame_dim=16, sound_dim=16))


def test_map_attack_loss_is_the_mass_outside_the_region() -> None:
    model = build_model("smallcnn", "anet", "loc", cls_num=3, frame_dim=16, sound_dim=16).eval()
    out = model(torch.rand(2, 3, 1, 32, 32), torch.rand(2, 1, 2048) * 2 - 1)
    head = model.net_classifier
    everywhere, nowhere = torch.ones(2, 32, 32, dtype=torch.bool), torch.zeros(2, 32, 32, dtype=torch.bool)
    labels = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(outside_mass_loss(head, everywhere)(out, labels), torch.zeros(2))
    torch.testing.assert_close(outside_mass_loss(head, nowhere)(out, labels), torch.ones(2))
    half = outside_mass_loss(head, box_mask(0, 0, 16, 32, 32).expand(2, 32, 32))(out, labels)
    assert ((half > 0) & (half < 1)).all() and half.requires_grad


# ------------------------------------------------------------------- a trained model on synthetic clips

PER_SPLIT = {"train": 20, "val": 4, "test": 12}
SEED = 0


def write_synthetic_root(root: Path, num_classes: int = 3) -> Path:
    """Rendered synthetic clips written straight into the SoP layout (no video encoding), with their
    boxes.json; the first class gets an odd name. Returns the boxes.json path."""
    names = [ODD_CLASS] + class_names(num_classes)[1:]
    per_class = sum(PER_SPLIT.values())
    config = SynthConfig(num_classes=num_classes, per_class=per_class, seed=SEED, size=64, duration=1.0, fps=8,
                         audio_rate=11025, p_distractor=0.0, p_occlusion=0.0, p_noise_burst=0.0,
                         p_audio_distractor=0.0)
    splits = [split for split, count in PER_SPLIT.items() for _ in range(count)]
    rows: dict[str, list[str]] = {split: [] for split in PER_SPLIT}
    videos = {}
    for c, name in enumerate(names):
        for v in range(per_class):
            row, key, meta = write_rendered_clip(root, config, SEED, c, v, name)
            rows[splits[v]].append(row)
            videos[key] = meta
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "categories.txt").write_text("\n".join(names) + "\n")
    boxes = root / "boxes.json"
    boxes.write_text(json.dumps({"size": [64, 64], "videos": videos}))
    return boxes


def model_flags(root: Path, ckpt: Path) -> list[str]:
    return ["--dataset", "synthetic", "--data_root", str(root), "--ckpt", str(ckpt), "--arch_classifier", "loc",
            "--arch_frame", "smallcnn", "--frame_dim", "16", "--arch_sound", "anet", "--sound_dim", "16",
            "--imgSize", "96", "--audLen", "2048", "--batch_size_per_gpu", "10", "--workers", "0",
            "--num_epoch", "5", "--lr_steps", "50", "--lr_frame", "0.01", "--lr_sound", "0.01",
            "--lr_classifier", "0.01", "--seed", str(SEED), "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Path]:
    """(model flags, boxes.json, run folder) of a `loc` model trained a few epochs on rendered clips."""
    root = tmp_path_factory.mktemp("synthetic")
    boxes = write_synthetic_root(root)
    flags = model_flags(root, tmp_path_factory.mktemp("ckpt"))
    main_attack.main(["--mode", "train", *flags])
    return flags, boxes, Path(run_dir_of(main_attack.parse_args(flags)))


@pytest.fixture(scope="module")
def boxed_results(trained) -> tuple[dict, Path]:
    flags, boxes, run = trained
    argv = [*flags, "--boxes", str(boxes), "--attack_type", "pgd", "--attack_steps", "3", "--epsilons", "1,0",
            "0.5,0.05", "--eps_grid", "0.5", "--eps_grid_modality", "visual", "--num_vis", "3"]
    main_localization.main(argv)
    out = eval_folder_of(run, "localization", main_localization.parse_args(argv))
    return json.loads((out / "loc_results.json").read_text()), out


def test_trained_model_localizes_above_the_centre_prior(boxed_results) -> None:
    results, _ = boxed_results
    clean, prior = results["clean"], results["center_prior"]
    assert results["num_samples"] == results["num_boxed"] == 3 * PER_SPLIT["test"]
    assert results["map_size"] == [6, 6]  # 96 px input, smallcnn stride 16
    assert clean["pointing"] > prior["pointing"] + 0.15, (clean, prior)
    assert clean["miou"] > prior["miou"], (clean, prior)
    assert 0 <= clean["auc"] <= 1 and len(clean["ious"]) == results["num_boxed"]


def test_map_attack_lowers_the_overlap_with_the_box(boxed_results) -> None:
    results, _ = boxed_results
    entries = {(e["objective"], e["budget"], e["grid"]): e for e in results["attacks"]}
    assert set(entries) == {(o, b, g) for o in ("class", "map") for b, g in (("V", False), ("A+V", False),
                                                                               ("V", True))}
    clean = results["clean"]
    visual_map = entries[("map", "V", False)]
    assert visual_map["miou"] < clean["miou"] - 0.05 and visual_map["pointing"] < clean["pointing"]
    assert visual_map["map_iou_top_mass"] < 1 and visual_map["peak_shift_px"] > 0
    assert entries[("class", "V", False)]["acc"] <= clean["acc"]


def test_outputs_table_figure_and_escaped_html(boxed_results) -> None:
    results, out = boxed_results
    table = (out / "loc_table.md").read_text()
    assert "| pointing | cIoU@0.5 |" in table and "| map | PGD | V (εv=1) |" in table and "| centre prior |" in table
    assert (out / "ciou_vs_eps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert page.count("<tr>") == 1 + 3 and "class V attack" in page and "map A+V attack" in page
    assets = sorted(p.name for p in (out / "assets").iterdir())
    assert len(assets) == 3 * (1 + 4) and all(set(name) & set("<&'") == set() for name in assets)
    assert "odd&amp;&#x27;&lt;b&gt;class" in page and ODD_CLASS not in page  # the first test samples' class


def test_real_data_mode_reports_the_change_of_the_map(trained) -> None:
    flags, _, run = trained
    argv = [*flags, "--attack_type", "fgsm", "--epsilons", "1,0", "--loc_attack", "map", "--num_vis", "0"]
    main_localization.main(argv)
    out = eval_folder_of(run, "localization", main_localization.parse_args(argv))
    assert out.name == "localization_noboxes_map_fgsm_V_v1a0"
    results = json.loads((out / "loc_results.json").read_text())
    assert results["num_boxed"] == 0 and "center_prior" not in results and "pointing" not in results["clean"]
    (entry,) = results["attacks"]
    assert entry["objective"] == "map" and 0 <= entry["map_iou_top_mass"] <= 1 and entry["peak_shift_px"] >= 0
    table = (out / "loc_table.md").read_text()
    assert "map IoU top 20% mass" in table and "| pointing |" not in table


def test_heads_without_a_map_are_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        main_localization.parse_args(["--dataset", "MUSIC", "--arch_classifier", "concat"])
    assert "has no localization map" in capsys.readouterr().err


def test_localization_under_a_cascade_counts_every_clip_on_its_final_input() -> None:
    """A cascade leaves clean-misclassified clips alone and stops attacking a clip once it is fooled: each clip's
    map metric is that of the last input it was given (clean for the ones never attacked), never dropped."""
    from evaluation.localization.evaluate import _final_values
    from evaluation.robustness.records import RecordKey, Records

    records = Records()
    records.add_samples(["a", "b", "c"], torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]),
                        torch.tensor([False, True, True]))
    first = RecordKey("autoattack", "A@v0,a0.1", "map", "apgd-ce")
    second = RecordKey("autoattack", "A@v0,a0.1", "map", "square")
    nan = float("nan")
    records.add(first, {"correct": torch.tensor([0, 0, 1]), "pointing": torch.tensor([nan, 0.0, 1.0])}, 3)
    records.add(second, {"correct": torch.tensor([0, -1, 1]), "pointing": torch.tensor([nan, nan, 0.0])}, 3)
    clean_pointing = np.array([1.0, 1.0, 1.0])
    final = _final_values(records, [first, second], "pointing", clean_pointing)
    assert final.tolist() == [1.0, 0.0, 0.0]  # a: never attacked (clean); b: fooled by the first; c: the last
    assert records.robust([first, second]).tolist() == [False, False, True]
