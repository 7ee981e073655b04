"""Steps 5-8 of ``scripts/demo.sh`` in one Python process (separate processes would each pay the start-up of
torch again): train the demo's models, attack them (PGD and the reduced audio-visual AutoAttack, the corruption
suite, the (eps_v, eps_a) map), localize under attack, and defend concat (dissimilarity constraint with the
memory banks, adversarial training), each attacked like the others. Every step prints the command line it
stands for, so that each can be rerun alone. Finished training runs resume and finished evaluations are
reused. Writes the evaluation folders for the summary, one per line, to ``--evals_out``.

    python scripts/demo_study.py --root data/synthetic --boxes data/synthetic_videos/boxes.json --ckpt ckpt/demo
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import io
import resource
import time
from collections.abc import Callable, Iterator

import main_attack
import main_defense
import main_localization
from evaluation.eval_dir import eval_folder_of
from training.engine import run_dir_of

HEADS = ("audio", "visual", "concat", "loc", "ssl")
# The CPU recipe of the README: a pooling CNN on 112 px frames, a log-mel CNN on 1.5 s of audio, AdamW with a
# cosine schedule (the paper's scripts keep ResNet-18 / anet and SGD).
RECIPE = ["--optimizer", "adamw", "--lr_frame", "1e-3", "--lr_sound", "1e-2", "--lr_classifier", "1e-2",
          "--weight_decay", "0.01", "--lr_schedule", "cosine", "--warmup_epochs", "1", "--label_smoothing", "0.1"]
# The label-free localizer (README, Learnability): EZ-VSL (ssl) on reflection-padded frames (zero padding marks every
# frame's edge alike, which the maps lock onto) with its audio projection batch-normalised (--ssl_audio_bn: without
# it the audio embeddings share one direction and the map ignores the sound), temperature 0.1, batches of 8 and
# 30 epochs (about 800 optimiser steps), AdamW at 2e-3: above the centre prior for every one of training seeds 0-9
# on the demo's data on an AVX2 CPU, but for only 1 of seeds 0-3 on an AVX-512 one, where rounding decides the state
# training ends in (not reliable), and not on the benchmark's shapes-centred set. Its
# model flags (the epochs among them) are part of its run id; its training prints the collapse detector's figures
# after each epoch.
SSL_MODEL = ["--frame_padding", "reflect", "--ssl_temperature", "0.1", "--ssl_audio_bn", "--num_epoch", "30"]
SSL_RECIPE = ["--optimizer", "adamw", "--lr_frame", "2e-3", "--lr_sound", "2e-3", "--lr_classifier", "2e-3",
              "--weight_decay", "0.01", "--lr_schedule", "cosine", "--warmup_epochs", "1", "--batch_size_per_gpu", "8",
              "--eval_epoch", "10"]  # its validation scores the probe only (the map is evaluated at the last epoch)
# The paper's budgets (A eps_a = 0.012, V eps_v = 0.012, A+V 0.006 each); PGD-10 and AutoAttack at a reduced budget
# (APGD 10 steps, 2 targets, Square 100 queries; DEMO_FULL: the standard 100 steps, 9 targets, 5000 queries), the
# sanity check's short large-budget PGD, evaluation batches of 60.
DEFENDED_BUDGETS = ["--epsilons", "0,0.012", "0.006,0.006"]  # V at 0.012 normalised is below 1/255
# The default demo evaluates (attacks, corruptions, localization) a class-stratified subset of the 300 test clips:
# AutoAttack's cost is in the clips that stay robust, and every attack is kept at its budget. DEMO_FULL: all 300.
EVAL_SAMPLES = 60
# A PGD-10 sweep to twice the budgets (the (eps_v, eps_a) map's points 0 and 0.024) on every model: a second budget of
# each kind, so that the gradient-masking checks can follow accuracy along eps and give a complete verdict.
SWEEP = ["--eps_grid2d", "0.024"]


def attack_flags(full: bool) -> list[str]:
    budget = ["--apgd_steps", "100", "--apgd_targets", "9", "--square_queries", "5000"] if full else \
        ["--apgd_steps", "10", "--apgd_targets", "2", "--square_queries", "100"]
    return ["--attack_type", "pgd", "autoattack", *budget, "--sanity_eps", "0.3", "--num_vis", "8",
            "--batch_size_per_gpu", "60"]


def attack_argvs(head: str, model_flags: list[str], attacks: list[str], severities: list[str],
                 full: bool) -> tuple[list[str], list[str]]:
    """The evaluation of ``head`` (attacks with the checks' sweep, or DEMO_FULL's map on concat, and the corruption
    suite), and the same flags without attacks, which select the folder its corruptions go to."""
    eps_map = ["--eps_grid2d", "0.012", "0.024"] if head == "concat" and full else SWEEP
    argv = ["--mode", "eval", "--arch_classifier", head, *model_flags, *attacks, "--corruptions",
            "--corruption_severities", *severities]
    return [*argv, *eps_map], [*argv, "--attack_type", "none"]


class DropIndented(io.TextIOBase):
    """A stdout that leaves out the lines that start with two spaces (the per-class and per-component detail
    of an evaluation's printout, which its folder keeps)."""

    def __init__(self, target) -> None:
        self.target, self.pending = target, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not line.startswith("  "):
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def quiet_details(enabled: bool = True) -> Iterator[None]:
    if not enabled:
        yield
        return
    stream = DropIndented(sys.stdout)
    with contextlib.redirect_stdout(stream):
        yield
    if stream.pending and not stream.pending.startswith("  "):
        sys.stdout.write(stream.pending)


class Study:
    """Runs the mains in this process, printing each command first and timing each step."""

    def __init__(self, model_flags: list[str]) -> None:
        self.model_flags = model_flags
        self.start = time.perf_counter()

    def call(self, script: str, main: Callable[[list[str]], None], argv: list[str], details: bool = True) -> None:
        print(f"$ python {script} {' '.join(argv)}", flush=True)
        with quiet_details(not details):
            main(argv)

    def step(self, title: str) -> None:
        """Print the step's title with the wall-clock and CPU seconds (this process and its finished workers) the
        study has taken so far."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = time.process_time() + children.ru_utime + children.ru_stime
        print(f"== {title}  [{time.perf_counter() - self.start:.0f} s into the study, {cpu:.0f} s of CPU]", flush=True)

    def flags_of(self, head: str) -> list[str]:
        """``head``'s model flags (the label-free localizer has its own)."""
        return ["--arch_classifier", head, *self.model_flags, *(SSL_MODEL if head == "ssl" else [])]

    def train(self, head: str) -> Path:
        recipe = SSL_RECIPE if head == "ssl" else RECIPE
        argv = ["--mode", "train", *self.flags_of(head), *recipe]
        run = run_dir_of(main_attack.parse_args(argv))
        if (run / "train_state_latest.pth").is_file():
            argv.append("--resume")
        self.call("main_attack.py", main_attack.main, argv)
        return run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="the preprocessed dataset (SoP layout)")
    p.add_argument("--boxes", required=True, help="boxes.json of the generated videos")
    p.add_argument("--ckpt", required=True, help="the runs' parent folder")
    p.add_argument("--seed", default="0")
    p.add_argument("--full", action="store_true",
                   help="DEMO_FULL: every test clip, AutoAttack's standard budget, all five severities, the (eps_v, "
                        "eps_a) map")
    p.add_argument("--eval_samples", type=int, default=None,
                   help=f"test clips each evaluation uses (class-stratified; default {EVAL_SAMPLES}, all with --full)")
    p.add_argument("--evals_out", type=Path, required=True, help="file listing the evaluation folders to summarize")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    model_flags = ["--dataset", "synthetic", "--data_root", args.root, "--ckpt", args.ckpt, "--seed", args.seed,
                   "--arch_frame", "poolcnn", "--frame_dim", "128", "--arch_sound", "mel", "--sound_dim", "128",
                   "--imgSize", "112", "--audLen", "16384", "--num_epoch", "15", "--batch_size_per_gpu", "16",
                   "--workers", "2"]
    study = Study(model_flags)
    samples = args.eval_samples or (None if args.full else EVAL_SAMPLES)
    subset = ["--eval_samples", str(samples)] if samples else []
    attacks = attack_flags(args.full) + subset
    severities = ["1", "2", "3", "4", "5"] if args.full else ["1", "3", "5"]

    study.step(f"5/9 training {' '.join(HEADS)} on the CPU (ssl: the label-free localizer, no labels reach its "
               "encoders)")
    runs = {head: study.train(head) for head in HEADS}

    clips = f"{samples} class-stratified test clips" if samples else "every test clip"
    study.step(f"6/9 attacking audio, visual, concat on {clips} (PGD and AutoAttack; A eps_a=0.012, V eps_v=0.012, "
               "A+V 0.006 each; PGD-10 also at twice the budgets, for the checks) and the corruption suite"
               + (", and the (eps_v, eps_a) map of concat under PGD" if args.full else ""))
    evals: list[Path] = []
    for head in ("audio", "visual", "concat"):
        argv, corruption_argv = attack_argvs(head, model_flags, attacks, severities, args.full)
        study.call("main_attack.py", main_attack.main, argv, details=False)
        evals.append(eval_folder_of(runs[head], "attack", main_attack.parse_args(argv)))
        corruptions = eval_folder_of(runs[head], "corruptions", main_attack.parse_args(corruption_argv))
        table = (corruptions / "corruption_table.md").read_text().splitlines()[2:]
        end = next((i for i, line in enumerate(table) if line.startswith("Measured strength")), len(table))
        print(f"-- corruptions of {head} (accuracy % [95 % interval]; severity 0 = clean):")
        print("\n".join(table[:end]))

    study.step("7/9 sound-source localization of loc (class-trained) and ssl (label-free) against the boxes, next "
               "to the centre prior and a random map, clean and under the class / map / correspondence attacks")
    for head in ("loc", "ssl"):
        checkpoint = "latest" if head == "ssl" else "best"  # ssl's "best" follows its linear probe, not its map
        study.call("main_localization.py", main_localization.main,
                   [*study.flags_of(head), "--boxes", args.boxes, "--attack_type", "pgd",
                    "--loc_attack", "class", "map", "corr", "--checkpoint", checkpoint, "--num_vis", "8",
                    "--batch_size_per_gpu", "60", "--epsilons", "0,0.012", "0.006,0.006",
                    *subset])

    study.step("8/9 defending concat: dissimilarity constraint with the memory banks, and PGD adversarial "
               "training; both attacked with PGD and AutoAttack under A and A+V, PGD also at twice the budgets "
               "(adaptive CE + cos, and BPDA through the banks)")
    base = runs["concat"]
    defense_flags = ["--arch_classifier", "concat", *model_flags, "--num_epoch", "5", "--lr_steps", "4",
                     "--lr_frame", "0.001", "--lr_sound", "0.001", "--lr_classifier", "0.001",
                     "--train_attack_steps", "3"]
    init = ["--weights_frame", str(base / "frame_best.pth"), "--weights_sound", str(base / "sound_best.pth"),
            "--weights_classifier", str(base / "classifier_best.pth")]
    for mode, banks in ((["--train_mode", "standard", "--lambda_cos", "1"], True),
                        (["--train_mode", "adv", "--lambda_cos", "0"], False)):
        train_argv = ["--mode", "train", *defense_flags, *init, *mode]
        if (run_dir_of(main_defense.parse_args(train_argv)) / "train_state_latest.pth").is_file():
            train_argv.append("--resume")
        study.call("main_defense.py", main_defense.main, train_argv)
        variants = ["ce+cos"]
        bank_flags: list[str] = []
        if banks:
            study.call("main_defense.py", main_defense.main, ["--mode", "build_bank", *defense_flags, *mode])
            bank_flags, variants = ["--use_banks"], ["ce+cos", "bpda"]  # BPDA differs only through the banks
        eval_argv = ["--mode", "eval", *defense_flags, *mode, *bank_flags, *attacks, *DEFENDED_BUDGETS, *SWEEP,
                     "--defense_attacks", *variants]
        study.call("main_defense.py", main_defense.main, eval_argv, details=False)
        evals.append(eval_folder_of(run_dir_of(main_defense.parse_args(eval_argv)), "defense",
                                    main_defense.parse_args(eval_argv)))
    args.evals_out.write_text("".join(f"{path}\n" for path in evals))
    study.step("steps 5-8 done")


if __name__ == "__main__":
    main()
