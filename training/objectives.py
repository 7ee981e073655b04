"""Training objectives: ``objective(model, frames, audio, labels, autocast) -> (loss, ModelOutput)``.

The plain cross-entropy of the recognition models, the paper's dissimilarity constraint, and the
adversarial-training baselines (PGD adversarial training, Madry et al. 2018; TRADES, Zhang et al.
2019) on the modalities with a budget > 0. Adversarial examples are made on the unwrapped model in
eval mode (the attacks switch it and restore each module's mode), so BatchNorm statistics see only
the training inputs. A self-supervised head (``models.correspondence``) brings its own objective,
``Correspondence`` (a contrastive loss, labels reaching its linear probe only): ``CrossEntropy`` switches to it.

Precision: an objective is called outside any autocast region. Only the model's training forward
passes run inside ``autocast()`` (``utils.precision.Precision.autocast`` under ``--amp``); the inner
maximisation (its input gradients and the TRADES target) and the losses stay in float32, so an attack
never takes an unscaled fp16 gradient.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks import ThreatModel, build_attack
from models import ModelOutput
from training.collapse import CollapseMonitor
from training.ssl_losses import AUDIO_REGULARISERS, SSL_OBJECTIVES, clip_warmup, pitch_shift

Autocast = Callable[[], AbstractContextManager]


def full_precision() -> AbstractContextManager:
    """The ``autocast`` of a float32 run: no change of precision."""
    return nullcontext()


class Objective(Protocol):
    def __call__(self, model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor,
                 autocast: Autocast = full_precision) -> tuple[Tensor, ModelOutput]: ...


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode, then every module back in its own mode (BatchNorm frozen by --freeze_bn stays so)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def pgd_step_sizes(eps: Mapping[str, float], steps: int) -> dict[str, float]:
    """The PGD step 2.5 eps / steps (Madry et al.) of each attacked modality; one with eps 0 is not
    attacked and gets no step."""
    return {m: 2.5 * e / steps for m, e in eps.items() if e > 0}


def mean_cosine(feat_v: Tensor | None, feat_a: Tensor | None) -> Tensor | None:
    """Mean cos(feat_v, feat_a) over the batch; None for a unimodal model."""
    if feat_v is None or feat_a is None:
        return None
    if feat_v.shape != feat_a.shape:
        raise ValueError(f"the dissimilarity term needs visual and audio features of one width, got "
                         f"{feat_v.shape[1]} and {feat_a.shape[1]} (set --frame_dim / --sound_dim equal)")
    return F.cosine_similarity(feat_v.float(), feat_a.float(), dim=1).mean()


# ----------------------------------------------------------------- self-supervised audio-visual correspondence



def is_self_supervised(model: nn.Module) -> bool:
    """Whether the model's head is trained without labels (``models.correspondence``)."""
    return bool(getattr(_unwrap(model).net_classifier, "self_supervised", False))


def refuse_self_supervised(model: nn.Module, what: str) -> None:
    if is_self_supervised(model):
        raise ValueError(f"{what} trains the encoders on the labels; the {type(_unwrap(model).net_classifier).__name__}"
                         " head is self-supervised (train it with --train_mode standard and --lambda_cos 0)")


class Correspondence:
    """The self-supervised heads' objective: their contrastive loss (``SSL_OBJECTIVES[head.ssl_loss]``) on the
    batch, plus the linear probe's cross-entropy on detached embeddings, so labels train the probe only.
    ``monitor`` collects each batch's collapse statistics (``training.collapse``).

    Training options against the collapse of the audio embedding (``configure``): ``audio_reg`` maps a regulariser
    of ``AUDIO_REGULARISERS`` to its weight (added on the batch's unit audio embeddings), and for the first
    ``warmup_epochs`` epochs the clip-level correspondence (``clip_warmup``) replaces the head's objective; with
    ``pitch_shift`` > 1 each training clip's audio is resampled by a random factor up to it
    (``ssl_losses.pitch_shift``), so that its pitch, drawn per clip, cannot identify the clip; the trainer sets
    ``epoch``."""

    def __init__(self) -> None:
        self.monitor = CollapseMonitor()
        self.audio_reg: dict[str, float] = {}
        self.warmup_epochs = 0
        self.pitch_shift = 1.0
        self.epoch = 0

    def configure(self, audio_reg: Mapping[str, float] | None = None, warmup_epochs: int = 0,
                  pitch_shift: float = 1.0) -> None:
        if pitch_shift < 1:
            raise ValueError(f"the pitch-shift factor must be >= 1 (1: off), got {pitch_shift}")
        self.pitch_shift = pitch_shift
        unknown = sorted(set(audio_reg or {}) - set(AUDIO_REGULARISERS))
        if unknown:
            raise ValueError(f"unknown audio regulariser(s) {unknown}; known: {sorted(AUDIO_REGULARISERS)}")
        if any(w < 0 for w in (audio_reg or {}).values()) or warmup_epochs < 0:
            raise ValueError(f"regulariser weights and warm-up epochs must be >= 0, got {audio_reg}, {warmup_epochs}")
        self.audio_reg = {name: w for name, w in (audio_reg or {}).items() if w > 0}
        self.warmup_epochs = warmup_epochs

    def __call__(self, model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor,
                 autocast: Autocast = full_precision) -> tuple[Tensor, ModelOutput]:
        head = _unwrap(model).net_classifier
        warming_up = self.epoch < self.warmup_epochs
        if self.pitch_shift > 1 and head.training:
            audio = pitch_shift(audio, self.pitch_shift)
        with autocast():
            out = model(frames, audio)
            probe = head.probe_logits(out.feat_v.detach(), out.feat_a.detach())
            if warming_up:
                contrastive, sims = clip_warmup(head, out)
            elif getattr(head, "momentum_encoders", False):  # its targets: the momentum encoders on these inputs
                contrastive, sims = SSL_OBJECTIVES[head.ssl_loss](head, out, inputs=(frames, audio))
            else:
                contrastive, sims = SSL_OBJECTIVES[head.ssl_loss](head, out)
            if self.audio_reg:
                emb_a = head.embed_audio(out.feat_a)
                contrastive = contrastive + sum(w * AUDIO_REGULARISERS[name](emb_a)
                                                for name, w in self.audio_reg.items())
        # the spread of the embeddings the map uses: no dropout, audio_norm's running statistics
        with torch.no_grad(), _eval_mode(head):
            self.monitor.update(sims, head.embed_audio(out.feat_a), head.embed_visual(out.fmap_v))
        return contrastive.float() + F.cross_entropy(probe.float(), labels), out


class CrossEntropy:
    """CE + ``lambda_cos`` * mean cos(feat_v, feat_a): plain training at 0, the dissimilarity constraint above."""

    label_smoothing: float = 0.0  # of the cross-entropy; the trainer sets it from --label_smoothing

    def __init__(self, lambda_cos: float = 0.0) -> None:
        self.lambda_cos = lambda_cos
        self.correspondence = Correspondence()

    def loss(self, out: ModelOutput, labels: Tensor) -> Tensor:
        loss = F.cross_entropy(out.logits.float(), labels, label_smoothing=self.label_smoothing)
        cos = mean_cosine(out.feat_v, out.feat_a) if self.lambda_cos else None
        return loss if cos is None else loss + self.lambda_cos * cos

    def __call__(self, model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor,
                 autocast: Autocast = full_precision) -> tuple[Tensor, ModelOutput]:
        if is_self_supervised(model):  # the objective follows the head
            if self.lambda_cos:
                raise ValueError("the dissimilarity constraint does not apply to a self-supervised head; "
                                 "pass --lambda_cos 0")
            return self.correspondence(model, frames, audio, labels, autocast)
        with autocast():
            out = model(frames, audio)
        return self.loss(out, labels), out


class PGDAdversarialTraining(CrossEntropy):
    """Train on PGD examples (random start) within ``eps``; a modality with eps 0 stays clean."""

    def __init__(self, eps: dict[str, float], steps: int, eps_units: str, lambda_cos: float = 0.0) -> None:
        super().__init__(lambda_cos)
        self.eps, self.steps, self.eps_units = eps, steps, eps_units

    def __call__(self, model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor,
                 autocast: Autocast = full_precision) -> tuple[Tensor, ModelOutput]:
        refuse_self_supervised(model, "PGD adversarial training")
        attack = build_attack("pgd", _unwrap(model), ThreatModel.of(self.eps, units=self.eps_units), steps=self.steps,
                              alpha=pgd_step_sizes(self.eps, self.steps), random_start=True)
        adv_frames, adv_audio = attack(frames, audio, labels)
        with autocast():
            out = model(adv_frames, adv_audio)
        return self.loss(out, labels), out


class Trades(CrossEntropy):
    """CE on clean inputs + ``beta`` * KL(p(x_adv) || p(x)), x_adv maximising that KL inside ``eps``
    (a modality with eps 0 stays clean)."""

    def __init__(self, eps: dict[str, float], steps: int, eps_units: str, beta: float = 6.0,
                 lambda_cos: float = 0.0) -> None:
        super().__init__(lambda_cos)
        self.eps, self.steps, self.eps_units, self.beta = eps, steps, eps_units, beta

    def __call__(self, model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor,
                 autocast: Autocast = full_precision) -> tuple[Tensor, ModelOutput]:
        refuse_self_supervised(model, "TRADES")
        inner = _unwrap(model)
        with torch.no_grad(), _eval_mode(inner):
            clean_prob = F.softmax(inner(frames, audio).logits.float(), dim=1)

        def kl_to_clean(out: ModelOutput, _labels: Tensor) -> Tensor:
            log_adv = F.log_softmax(out.logits.float(), dim=1)
            return F.kl_div(log_adv, clean_prob, reduction="none").sum(dim=1)

        attack = build_attack("pgd", inner, ThreatModel.of(self.eps, units=self.eps_units), steps=self.steps,
                              alpha=pgd_step_sizes(self.eps, self.steps), loss=kl_to_clean, random_start=True)
        adv_frames, adv_audio = attack(frames, audio, labels)
        with autocast():
            out = model(frames, audio)
            adv_out = model(adv_frames, adv_audio)
        robust = F.kl_div(F.log_softmax(adv_out.logits.float(), dim=1), F.softmax(out.logits.float(), dim=1),
                          reduction="batchmean")
        return self.loss(out, labels) + self.beta * robust, out
