"""Command-line flags for every entry point, grouped, with the original code's names kept.

Values are validated once here, so a bad value or an unknown flag ends in a one-line argparse error
naming the flag. ``--dataset`` presets (dataset/presets.py) fill what the user did not give.
"""
from __future__ import annotations

import argparse
import inspect
import shlex
import sys
from pathlib import Path

from attacks import ALIASES, CASCADES, attack_names, describe
from attacks.threat import add_threat_flags, check_threat_flags
from dataset.presets import PRESETS, root_categories
from evaluation.robustness.engine import SHIFT
from training.run import apply_saved_config, given_flags, settle_run_folder
from utils.cli import OneLineParser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _eps_pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected EPS_VISUAL,EPS_AUDIO, got {text!r}")
    return _non_negative_float(parts[0]), _non_negative_float(parts[1])


def _category_list(text: str) -> list[str]:
    return [name for name in text.replace(",", " ").split() if name]


class ArgParser:
    """Builds the parser of one entry point from flag groups; ``parse`` validates and fills presets."""

    def __init__(self, description: str, prog: str | None = None) -> None:
        self.parser = OneLineParser(
            prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            allow_abbrev=False)

    def add_data_arguments(self) -> ArgParser:
        g = self.parser.add_argument_group("data")
        g.add_argument("--dataset", choices=sorted(PRESETS), default="MUSIC",
                       help="preset: categories, cls_num, data root and index paths (explicit flags win)")
        g.add_argument("--data_root", default=None,
                       help="dataset root holding audio/, frames/ and the index CSVs; default: "
                            "$MUSIC_ROOT / $AVE_ROOT / $KINETICS_ROOT / $SYNTHETIC_ROOT / $CUSTOM_ROOT, else "
                            "data/<dataset>; custom: your own data, classes from <root>/categories.txt or "
                            "the class folders under <root>/audio")
        g.add_argument("--list_train", default=None, help="train index CSV (default <root>/train.csv)")
        g.add_argument("--list_val", default=None, help="validation index CSV (default <root>/val.csv)")
        g.add_argument("--list_test", default=None, help="test index CSV (default <root>/test.csv)")
        g.add_argument("--audio_path", default=None, help="folder the CSV's wav paths are relative to")
        g.add_argument("--frame_path", default=None, help="folder the CSV's frame paths are relative to")
        g.add_argument("--categories", type=_category_list, nargs="+", default=None,
                       help="class names in label order, comma or space separated (default: preset)")
        g.add_argument("--cls_num", type=_positive_int, default=None,
                       help="number of classes (default: number of categories)")
        g.add_argument("--num_frames", type=_positive_int, default=1, help="frames per clip")
        g.add_argument("--stride_frames", type=_positive_int, default=8, help="frames between picked frames")
        g.add_argument("--frameRate", type=_positive_float, default=8, help="fps of the extracted frames")
        g.add_argument("--imgSize", type=_positive_int, default=224, help="frame crop size")
        g.add_argument("--audLen", type=_positive_int, default=65535, help="audio window in samples")
        g.add_argument("--audRate", type=_positive_int, default=11025, help="audio sample rate")
        g.add_argument("--skip_bad", action="store_true",
                       help="check every index row's files at start-up; drop and list the bad ones")
        g.add_argument("--max_samples", type=_positive_int, default=None,
                       help="use a class-stratified subset of N rows of each index: about N/classes per class, the "
                            "first rows of each class in CSV order (quick runs)")
        g.add_argument("--batch_size_per_gpu", type=_positive_int, default=32,
                       help="batch size per process (per GPU; the whole batch on CPU)")
        g.add_argument("--workers", type=_non_negative_int, default=4, help="data loader workers per process")
        g.add_argument("--decode_device", choices=("cpu", "cuda"), default="cpu",
                       help="where frames are decoded: cpu (loader workers, PIL) or cuda (workers read JPEG bytes; "
                            "the training GPU decodes them in batches with nvJPEG)")
        g.add_argument("--seed", type=int, default=1234, help="seed for data order, augmentation and init")
        return self

    def add_model_arguments(self) -> ArgParser:
        from models import FRAME_NETS, FUSION_HEADS, SOUND_NETS

        g = self.parser.add_argument_group("model")
        g.add_argument("--arch_frame", choices=FRAME_NETS.names(), default="resnet18", help="visual encoder")
        g.add_argument("--arch_sound", choices=SOUND_NETS.names(), default="anet", help="audio encoder")
        g.add_argument("--arch_classifier", choices=FUSION_HEADS.names(), default="concat",
                       help="fusion head: audio / visual are the unimodal models")
        g.add_argument("--img_pool", choices=["max", "avg"], default="max", help="spatial pooling of the visual map")
        g.add_argument("--map_activation", choices=["softmax", "sigmoid"], default=None,
                       help="loc head's localization map: softmax over locations (sums to 1; the default) or "
                            "a sigmoid per location (each in [0, 1])")
        g.add_argument("--frame_padding", choices=["zeros", "reflect"], default=None,
                       help="border of the smallcnn / poolcnn frame encoders' convolutions (default zeros); reflect "
                            "leaves no mark on the frame's edge locations, which a self-supervised localizer "
                            "otherwise locks onto; part of the run id")
        g.add_argument("--ssl_temperature", type=_positive_float, default=None,
                       help="self-supervised heads (ssl*): contrastive temperature (default: the head's published "
                            "one, 0.03 for ssl / ssl_avc / ssl_fnac / ssl_slavc, 0.07 for ssl_lvs); part of the run id")
        g.add_argument("--ssl_momentum", type=_unit_interval, default=None,
                       help="momentum-target heads (ssl_slavc, ssl_slavc_enc): EMA momentum m of the targets, "
                            "target = m target + (1 - m) online per step (default SLAVC's 0.999, set for about 22k "
                            "steps; a run of a few hundred steps needs less); part of the run id")
        g.add_argument("--ssl_audio_bn", action="store_true", default=None,
                       help="self-supervised heads ssl / ssl_lvs / ssl_avc / ssl_fnac: batch-normalise the audio "
                            "projection (no affine) before the L2 normalisation, which removes the component every "
                            "clip's audio embedding shares (the collapse that leaves the map a function of the frame "
                            "alone); part of the run id")
        g.add_argument("--frame_dim", type=_positive_int, default=None,
                       help="visual feature width of encoders that take one (smallcnn)")
        g.add_argument("--sound_dim", type=_positive_int, default=None,
                       help="audio feature width (anet / stft / mel; default 512)")
        g.add_argument("--stft_frame", type=_positive_int, default=1022, help="STFT window of stft / mel encoders")
        g.add_argument("--stft_hop", type=_positive_int, default=256, help="STFT hop of stft / mel encoders")
        g.add_argument("--weights_frame", default="",
                       help="initial visual weights (--mode train only): 'imagenet' (torchvision download), "
                            "'simclr' (self-supervised pretraining on the training split's own frames first; "
                            "--pretrain_epochs, --pretrain_lr; no download) or a checkpoint path")
        g.add_argument("--weights_sound", default="",
                       help="initial audio encoder weights (--mode train only; checkpoint path)")
        g.add_argument("--weights_classifier", default="",
                       help="initial fusion head weights (--mode train only; checkpoint path)")
        return self

    def add_run_arguments(self, modes: list[str]) -> ArgParser:
        g = self.parser.add_argument_group("run")
        g.add_argument("--mode", choices=modes, default=modes[0])
        g.add_argument("--id", default="", help="run id prefix; the flags that define the model are appended")
        g.add_argument("--ckpt", default="./ckpt", help="folder of run folders")
        g.add_argument("--run", default=None, metavar="RUN_DIR",
                       help="the run folder to use: its saved configuration (args.json) gives every model, data and "
                            "training flag not given here; model and data-shape flags given here must agree with it")
        g.add_argument("--overwrite", action="store_true",
                       help="train: delete the run already in the folder (checkpoints and evaluations) and train "
                            "again; eval: run an evaluation again into its existing folder")
        if set(modes) - {"train", "build_bank"}:
            g.add_argument("--print_eval_dir", action="store_true",
                           help="print the evaluation folder these flags select (RUN/evals/<name>) and exit")
            g.add_argument("--eval_name", default=None, metavar="NAME",
                           help="name of the evaluation folder RUN/evals/NAME (default: derived from the kind, "
                                "attacks, budgets and settings)")
            g.add_argument("--eval_samples", type=_positive_int, default=None, metavar="N",
                           help="evaluate a class-stratified subset of N test clips (the first of each class in "
                                "CSV order, as --max_samples picks them) without changing the run: part of the "
                                "evaluation's folder and flags, so evaluations on different subsets are kept "
                                "apart; summaries compare models on the clips they share")
        g.add_argument("--num_gpus", type=_positive_int, default=1,
                       help="processes of the run, one per GPU; must equal the launch's (torchrun "
                            "--nproc_per_node; 1 for plain python); the scripts set it from NUM_GPUS")
        g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="auto: CUDA when present, else CPU")
        g.add_argument("--amp", action="store_true",
                       help="mixed precision (autocast to --amp_dtype) for the training forward passes; attacks, "
                            "validation and evaluation stay fp32; part of a run's training flags")
        g.add_argument("--amp_dtype", choices=["auto", "float16", "bfloat16"], default="auto",
                       help="--amp's dtype: auto is bfloat16 where the device computes it natively (CUDA GPUs "
                            "from Ampere on, the CPU), else float16; bfloat16 runs without a GradScaler, float16 "
                            "with one (CUDA only)")
        g.add_argument("--cudnn_benchmark", choices=["auto", "on", "off"], default="auto",
                       help="cuDNN times its convolution algorithms per input shape: auto is on for training "
                            "(fixed batch shapes), off for evaluation (shapes vary)")
        g.add_argument("--deterministic", action="store_true",
                       help="bit-exact reruns: cuDNN deterministic, no benchmarking, "
                            "torch.use_deterministic_algorithms(warn_only=True); slower")
        g.add_argument("--channels_last", choices=["auto", "on", "off"], default="auto",
                       help="channels-last memory format of the model and its frames: auto is on for CUDA models "
                            "with 2-D convolutions")
        g.add_argument("--print_run_dir", action="store_true",
                       help="print the run folder these flags select (--ckpt/<run id>) and exit")
        g.add_argument("--disp_iter", type=_positive_int, default=20, help="batches between progress lines")
        return self

    def add_train_arguments(self) -> ArgParser:
        g = self.parser.add_argument_group("optimisation")
        g.add_argument("--num_epoch", type=_positive_int, default=None, help="epochs (default: preset)")
        g.add_argument("--lr_frame", type=_positive_float, default=1e-4, help="learning rate of the visual net")
        g.add_argument("--lr_sound", type=_positive_float, default=1e-3, help="learning rate of the audio net")
        g.add_argument("--lr_classifier", type=_positive_float, default=1e-3, help="learning rate of the head")
        g.add_argument("--lr_steps", type=_positive_int, nargs="+", default=None,
                       help="epochs at which every learning rate is multiplied by 0.1 (default: preset)")
        g.add_argument("--beta1", type=float, default=0.9, help="SGD momentum; AdamW's beta1")
        g.add_argument("--weight_decay", type=float, default=1e-4,
                       help="weight decay (SGD: L2 in the gradient; AdamW: decoupled)")
        g.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                       help="sgd: the paper's (per-module learning rates); adamw: learns faster from scratch on CPU "
                            "(typical lr 1e-3 .. 3e-3, --weight_decay 0.01)")
        g.add_argument("--lr_schedule", choices=["step", "cosine"], default="step",
                       help="step: x0.1 at each --lr_steps epoch (the paper's); cosine: half a cosine down to the "
                            "last epoch (--lr_steps unused)")
        g.add_argument("--warmup_epochs", type=_non_negative_int, default=0,
                       help="epochs of linear learning-rate warm-up before the schedule")
        g.add_argument("--label_smoothing", type=float, default=0.0,
                       help="label smoothing of the training cross-entropy, in [0, 1)")
        g.add_argument("--freeze_bn", action="store_true",
                       help="keep BatchNorm statistics fixed while training (small per-GPU batches)")
        g.add_argument("--eval_epoch", type=_positive_int, default=1, help="validate every N epochs")
        g.add_argument("--pretrain_epochs", type=_positive_int, default=20,
                       help="--weights_frame simclr: epochs of SimCLR pretraining of the frame encoder")
        g.add_argument("--pretrain_lr", type=_positive_float, default=1e-3,
                       help="--weights_frame simclr: AdamW learning rate of that pretraining")
        g.add_argument("--ssl_uniformity", type=_non_negative_float, default=0.0,
                       help="self-supervised heads: weight of a uniformity term (Wang & Isola 2020) on the batch's "
                            "unit audio embeddings, against the collapse of the audio embedding (0: off)")
        g.add_argument("--ssl_vicreg", type=_non_negative_float, default=0.0,
                       help="self-supervised heads: weight of VICReg's variance + covariance terms on the batch's "
                            "unit audio embeddings (x sqrt(dim)), against that collapse (0: off)")
        g.add_argument("--ssl_warmup_epochs", type=_non_negative_int, default=0,
                       help="self-supervised heads: epochs of clip-level audio-visual correspondence (the audio "
                            "against the frame's mean embedding) before the head's own objective")
        g.add_argument("--ssl_pitch_shift", type=float, default=1.0,
                       help="self-supervised heads: resample each training clip's audio by a random factor in "
                            "[1/F, F] (pitch and tempo), so that a clip's own pitch cannot identify it (1: off)")
        g.add_argument("--on_collapse", choices=["warn", "stop", "off"], default="warn",
                       help="self-supervised heads: after each epoch from the second, when the embeddings all point "
                            "one way and audio-to-frame retrieval is at chance, print the figures (warn) or also "
                            "end the training (stop)")
        g.add_argument("--resume", action="store_true",
                       help="continue the run from its 'latest' checkpoint (same run id)")
        g.add_argument("--compile", action="store_true",
                       help="--mode train: torch.compile the model for the training steps (validation, attacks "
                            "and evaluation run it uncompiled); the first steps pay the compilation")
        return self

    def add_attack_arguments(self) -> ArgParser:
        g = self.parser.add_argument_group("attacks (--mode eval)")
        g.add_argument("--attack_type", nargs="+", type=str.lower, default=["fgsm", "pgd", "mim"],
                       choices=attack_type_choices(),
                       help="attacks to run (the README's table lists them; 'fsgm' is the original code's spelling of "
                            "fgsm; 'autoattack' / 'aa': the cascade APGD-CE, APGD-T, Square on the samples still "
                            "standing; 'shift': the worst audio-visual misalignment of the --max_shift grid; "
                            "'shift+pgd' etc.: that attack from the worst-shifted audio; 'none': clean only)")
        add_threat_flags(g, _positive_float, _non_negative_float, _positive_int)
        g.add_argument("--epsilons", type=_eps_pair, nargs="+", default=None, metavar="EV,EA",
                       help="budgets as visual,audio pairs, replacing the paper's protocol "
                            "(A: 0,0.012  V: 0.012,0  A+V: 0.006,0.006)")
        g.add_argument("--eps_grid", type=_non_negative_float, nargs="+", default=None,
                       help="extra budgets swept for the accuracy-vs-eps figure")
        g.add_argument("--eps_grid_modality", nargs="+", choices=["audio", "visual", "both"],
                       default=["audio", "visual", "both"], help="modalities the --eps_grid sweep attacks")
        g.add_argument("--attack_steps", type=_positive_int, default=None,
                       help="PGD and MIM iterations (default 10, the paper's)")
        g.add_argument("--apgd_steps", type=_positive_int, default=100,
                       help="APGD-CE and APGD-T iterations, alone and in AutoAttack (100: AutoAttack's standard "
                            "version)")
        g.add_argument("--apgd_targets", type=_positive_int, default=9,
                       help="APGD-T target classes: the top ones other than the label (9 as AutoAttack; at most "
                            "classes - 1)")
        g.add_argument("--attack_alpha", type=_positive_float, default=None,
                       help="step size in the budget's units (default eps/8, the paper's)")
        g.add_argument("--attack_loss", choices=["ce", "ce+cos", "dlr"], default="ce",
                       help="objective: cross-entropy, the released adaptive CE + cos(feat_v, feat_a), or DLR")
        g.add_argument("--random_start", action="store_true",
                       help="start PGD, MIM, APGD and APGD-T from a random point of the ball (off in the paper)")
        g.add_argument("--restarts", type=_positive_int, default=1,
                       help="restarts of the iterative attacks from random starts (the per-sample worst is kept)")
        g.add_argument("--square_queries", type=_positive_int, default=5000,
                       help="Square attack: queries (forward passes) per sample (5000 as AutoAttack)")
        g.add_argument("--square_p_init", type=_positive_float, default=0.8,
                       help="Square attack: initial share of the input a square (window) covers")
        g.add_argument("--eot_iter", type=_positive_int, default=1,
                       help="gradients averaged over this many forward passes (EOT, for randomised models)")
        g.add_argument("--sanity_eps", type=_non_negative_float, default=0.3,
                       help="check: a short PGD at this budget on both modalities must bring accuracy near "
                            "chance (0 skips the check)")
        g.add_argument("--num_vis", type=_non_negative_int, default=8,
                       help="samples shown on the HTML page of adversarial examples")
        return self

    def add_corruption_arguments(self) -> ArgParser:
        from evaluation.corruption.corruptions import SEVERITIES, resolve_names

        def corruption_name(text: str) -> str:
            try:
                resolve_names([text])
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
            return text

        g = self.parser.add_argument_group("corruptions and missing modalities (--mode eval)")
        g.add_argument("--corruptions", nargs="*", type=corruption_name, default=None, metavar="NAME",
                       help="after the clean evaluation, the natural-robustness suite on the test split: corruptions "
                            "(e.g. jpeg, aac), co-occurring pairs (e.g. jpeg+aac), missing_<visual|audio>_<zeros|mean"
                            "|noise>, or the groups visual, audio, both, missing; no name: the whole suite")
        g.add_argument("--corruption_severities", nargs="+", type=int, choices=SEVERITIES, default=list(SEVERITIES),
                       help="severities of the --corruptions suite")
        return self

    def add_defense_arguments(self) -> ArgParser:
        g = self.parser.add_argument_group("defense")
        g.add_argument("--train_mode", choices=["standard", "adv", "trades"], default="standard",
                       help="standard training, PGD adversarial training on both modalities, or TRADES")
        g.add_argument("--lambda_cos", type=_non_negative_float, default=None,
                       help="weight of mean cos(feat_v, feat_a) added to the loss: the dissimilarity constraint "
                            "(default 1 as released with --train_mode standard, 0 with adv / trades)")
        g.add_argument("--train_eps", type=_non_negative_float, nargs=2, default=[0.012, 0.012],
                       metavar=("EV", "EA"), help="adversarial-training budgets, visual and audio (--eps_units)")
        g.add_argument("--train_attack_steps", type=_positive_int, default=5,
                       help="PGD steps of adversarial training and TRADES (step 2.5 eps / steps)")
        g.add_argument("--trades_beta", type=_non_negative_float, default=6.0, help="TRADES robustness weight")
        g.add_argument("--use_banks", action="store_true",
                       help="purify features with the memory banks (default files: the run's bank_v.pth, bank_a.pth)")
        g.add_argument("--weights_Dv", default="", help="visual memory bank file")
        g.add_argument("--weights_Da", default="", help="audio memory bank file")
        g.add_argument("--bank_size", type=_positive_int, default=1024, help="bank columns (1024 as released)")
        g.add_argument("--bank_method", choices=["random", "kmeans"], default="random",
                       help="bank columns: a seeded random subset of training features, or k-means centres")
        g.add_argument("--bank_mix", type=_non_negative_float, default=None,
                       help="a in a*D*alpha + (1-a)*f (default 0.5; 0.6 on Kinetics)")
        g.add_argument("--solver", choices=["fista", "ista"], default="fista",
                       help="sparse coding: batched FISTA, or the released ISTA with --alpha_v / --alpha_a")
        g.add_argument("--lasso_lambda", type=_positive_float, default=0.1, help="lasso weight (0.1 as released)")
        g.add_argument("--alpha_v", type=_positive_float, default=None,
                       help="released ISTA step, visual (default: the paper's per dataset)")
        g.add_argument("--alpha_a", type=_positive_float, default=None,
                       help="released ISTA step, audio (default: the paper's per dataset)")
        g.add_argument("--coding_tol", type=_positive_float, default=8e-4,
                       help="stop sparse coding when the code changes by less (8e-4 as released)")
        g.add_argument("--coding_max_iter", type=_positive_int, default=2000,
                       help="sparse-coding iteration cap (2000 as released)")
        g.add_argument("--bank_warm_start", choices=["on", "off"], default="on",
                       help="during attacks, start each sample's sparse coding from its code at the previous attack "
                            "step (the clean code at the first): the same lasso solution in a few iterations; "
                            "'off' codes from zero at every step (--solver fista, not with --coding_grad unrolled)")
        g.add_argument("--coding_grad", choices=["implicit", "unrolled"], default="implicit",
                       help="white-box gradient through the sparse coding: implicit differentiation of the lasso "
                            "solution (memory independent of the iterations) or backprop through the unrolled solver")
        g.add_argument("--defense_attacks", nargs="+", choices=["ce", "ce+cos", "bpda"],
                       default=["ce", "ce+cos", "bpda"],
                       help="attack variants whose worst case is reported: white-box CE through the sparse "
                            "coding, white-box CE + cos (the released adaptive attack), BPDA (identity backward)")
        return self

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = self.parser.parse_args(argv)
        args.command = shlex.join(["python", self.parser.prog] + argv)  # recorded with the run and its evaluations
        if getattr(args, "run", None):
            apply_saved_config(args, given_flags(self.parser, argv), self.parser)
        if hasattr(args, "dataset"):
            apply_dataset_preset(args, self.parser)
        if getattr(args, "decode_device", "cpu") == "cuda":
            _check_decode_device(args, self.parser)
        if hasattr(args, "num_epoch"):
            _apply_schedule(args, self.parser)
        if hasattr(args, "amp"):
            _check_precision_flags(args, self.parser)
        if hasattr(args, "restarts") and args.restarts > 1 and not args.random_start:
            self.parser.error("--restarts > 1 needs --random_start (restarts from the clean input are identical)")
        if hasattr(args, "attack_type"):
            names = ("fgsm" if a == "fsgm" else a for a in args.attack_type)
            args.attack_type = [a for a in dict.fromkeys(names) if a != "none"]
        if hasattr(args, "arch_sound") and args.arch_sound in ("stft", "mel") and args.audLen < args.stft_frame:
            self.parser.error(f"--audLen {args.audLen} is shorter than --stft_frame {args.stft_frame}: the "
                              f"{args.arch_sound} encoder needs at least one STFT window of audio")
        if hasattr(args, "attack_type"):
            for attack in args.attack_type:
                name = attack.split("+")[-1]
                if name != SHIFT and describe(name).min_classes > args.cls_num:
                    self.parser.error(f"--attack_type {attack}: its attacks need at least "
                                      f"{describe(name).min_classes} classes (the targeted DLR loss); this dataset "
                                      f"has {args.cls_num}")
        if hasattr(args, "norm"):
            _validate_threat_model(args, self.parser)
        if hasattr(args, "arch_frame"):
            _check_architecture(args, self.parser)
        if hasattr(args, "arch_classifier"):
            args.id = run_id(args)
            settle_run_folder(args)
        if getattr(args, "eval_name", None) is not None:
            _check_eval_name(args, self.parser)
        if getattr(args, "eval_samples", None) is not None and args.mode in ("train", "build_bank"):
            self.parser.error(f"--eval_samples picks the test clips of an evaluation; --mode {args.mode} evaluates "
                              f"none (--max_samples subsets every split of a run)")
        return args


def _check_architecture(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Width flags apply to the encoders that take a width."""
    from models import FRAME_NETS, FUSION_HEADS, SOUND_NETS

    for flag, arch, registry in (("frame_dim", "arch_frame", FRAME_NETS), ("sound_dim", "arch_sound", SOUND_NETS)):
        cls = registry.get(getattr(args, arch))
        if getattr(args, flag) is not None and "dim" not in inspect.signature(cls.__init__).parameters:
            takes = [n for n in registry.names() if "dim" in inspect.signature(registry.get(n).__init__).parameters]
            parser.error(f"--{flag} {getattr(args, flag)} does not apply to --{arch} {getattr(args, arch)} (its width "
                         f"is fixed); it sets the width of {', '.join(takes)}")
    head = FUSION_HEADS.get(args.arch_classifier)
    for flag, param in (("ssl_temperature", "temperature"), ("ssl_momentum", "momentum"),
                        ("ssl_audio_bn", "audio_bn")):
        if getattr(args, flag, None) is not None and param not in inspect.signature(head.__init__).parameters:
            takes = [n for n in FUSION_HEADS.names()
                     if param in inspect.signature(FUSION_HEADS.get(n).__init__).parameters]
            given = f"--{flag}" if getattr(args, flag) is True else f"--{flag} {getattr(args, flag)}"
            parser.error(f"{given} does not apply to --arch_classifier "
                         f"{args.arch_classifier}; it applies to {', '.join(takes)}")
    if getattr(args, "ssl_audio_bn", None) and getattr(args, "freeze_bn", False):
        parser.error("--ssl_audio_bn centres the audio projection with the batch's statistics, which --freeze_bn "
                     "keeps at their initial values (no centring); drop one of them")


def _check_precision_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.amp_dtype != "auto" and not args.amp:
        parser.error(f"--amp_dtype {args.amp_dtype} sets the dtype of --amp; add --amp (or drop --amp_dtype)")
    if args.deterministic and args.cudnn_benchmark == "on":
        parser.error("--deterministic and --cudnn_benchmark on contradict each other: benchmarking picks cuDNN "
                     "algorithms by timing, so two runs may pick different ones")
    if getattr(args, "compile", False) and args.mode != "train":
        parser.error(f"--compile compiles the model for training; --mode {args.mode} runs it uncompiled")


def _check_eval_name(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    name = args.eval_name
    if args.mode in ("train", "build_bank"):
        parser.error(f"--eval_name names an evaluation folder; --mode {args.mode} writes none")
    if not name or name in (".", "..") or "/" in name or name.startswith("."):
        parser.error(f"--eval_name {name!r}: give a plain folder name (no '/', not starting with '.')")


def _check_decode_device(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    import torch

    if not torch.cuda.is_available():
        parser.error("--decode_device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False); "
                     "use --decode_device cpu")
    if getattr(args, "device", "auto") == "cpu":
        parser.error("--decode_device cuda decodes on the training GPU, but --device cpu trains on the CPU")


def _apply_schedule(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    preset = PRESETS[args.dataset]
    if args.num_epoch is None:
        args.num_epoch = preset.num_epoch
    if args.lr_steps is None:
        args.lr_steps = list(preset.lr_steps)
    if sorted(args.lr_steps) != args.lr_steps:
        parser.error(f"--lr_steps must increase, got {args.lr_steps}")
    if not 0 <= args.beta1 < 1:
        parser.error(f"--beta1 must be in [0, 1), got {args.beta1}")
    if args.weight_decay < 0:
        parser.error(f"--weight_decay must be >= 0, got {args.weight_decay}")
    if not 0 <= args.label_smoothing < 1:
        parser.error(f"--label_smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.warmup_epochs >= args.num_epoch:
        parser.error(f"--warmup_epochs {args.warmup_epochs} must be fewer than --num_epoch {args.num_epoch}")


def attack_type_choices() -> list[str]:
    """--attack_type's choices, from the attack registry: every attack and cascade, their aliases, 'none', the
    misalignment 'shift' and 'shift+<attack>' for every single attack."""
    singles = [name for name in attack_names() if name not in CASCADES]
    return [*attack_names(), *ALIASES, "none", SHIFT, *(f"{SHIFT}+{name}" for name in singles)]


def _validate_threat_model(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Resolve --eps_units and check the threat-model flags against each other and the attacks."""
    no_joint = []
    if args.joint_eps is not None:
        no_joint = sorted({a for a in args.attack_type if not describe(a.split("+")[-1]).joint_ball})
    check_threat_flags(args, parser.error, no_joint)
    shift_attacks = [a for a in args.attack_type if a.split("+")[0] == SHIFT]
    if shift_attacks and args.max_shift is None:
        parser.error(f"--attack_type {shift_attacks[0]} needs --max_shift SECONDS")
    if args.max_shift is not None and not shift_attacks:
        parser.error("--max_shift needs a misalignment attack in --attack_type (shift, shift+pgd, ...)")
    if args.eps_grid2d is not None and (not args.attack_type or args.attack_type[0] == SHIFT):
        parser.error("--eps_grid2d needs a first --attack_type with a budget (not 'shift' or 'none')")


def run_id(args: argparse.Namespace) -> str:
    """The run folder name: the user's ``--id`` prefix plus the flags that define the model, as the
    original code built it, so the train and eval scripts of one model meet in one folder."""
    parts = [args.id] if args.id else []
    parts += [args.dataset, args.arch_classifier]
    if getattr(args, "map_activation", None) == "sigmoid":
        parts.append("sigmoid")
    if getattr(args, "ssl_temperature", None) is not None:
        parts.append(f"t{args.ssl_temperature:g}")
    if getattr(args, "ssl_momentum", None) is not None:
        parts.append(f"m{args.ssl_momentum:g}")
    if getattr(args, "ssl_audio_bn", None):
        parts.append("audiobn")
    if args.arch_classifier != "audio":
        padding = "-reflect" if getattr(args, "frame_padding", None) == "reflect" else ""
        parts.append(f"{args.arch_frame}{args.frame_dim or ''}{padding}-{args.img_pool}")
    if args.arch_classifier != "visual":
        parts.append(f"{args.arch_sound}{args.sound_dim or ''}")
    parts.append(f"frames{args.num_frames}stride{args.stride_frames}")
    if hasattr(args, "num_epoch"):
        parts.append(f"epoch{args.num_epoch}")
    return "-".join(parts)


def apply_dataset_preset(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill data paths, categories and cls_num from ``--dataset`` where the user gave no flag."""
    preset = PRESETS[args.dataset]
    root = Path(args.data_root) if args.data_root else preset.default_root()
    args.data_root = str(root)
    for flag, name in (("list_train", "train.csv"), ("list_val", "val.csv"), ("list_test", "test.csv")):
        if getattr(args, flag) is None:
            setattr(args, flag, str(root / name))
    if args.audio_path is None:
        args.audio_path = str(root / "audio")
    if args.frame_path is None:
        args.frame_path = str(root / "frames")
    if args.categories is not None:
        args.categories = [name for group in args.categories for name in group]
    else:
        if preset.categories:
            args.categories = list(preset.categories)
        else:
            try:
                args.categories = root_categories(root, preset.folder_categories)
            except (FileNotFoundError, ValueError) as err:
                parser.error(f"--dataset {args.dataset}: {err}")
    if len(set(args.categories)) != len(args.categories):
        parser.error("--categories: duplicate class names")
    if args.cls_num is None:
        args.cls_num = len(args.categories)
    elif args.cls_num != len(args.categories):
        parser.error(f"--cls_num {args.cls_num} does not match the {len(args.categories)} --categories")
