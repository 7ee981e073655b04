"""Training objectives: ``objective(model, frames, audio, labels) -> (loss, ModelOutput)``.

The plain cross-entropy of the recognition models, the paper's dissimilarity constraint, and the
adversarial-training baselines (PGD adversarial training, Madry et al. 2018; TRADES, Zhang et al.
2019) on both modalities. Adversarial examples are made on the unwrapped model in eval mode (the
attacks switch it and restore train mode), so BatchNorm statistics see only the training inputs.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks import build_attack
from models import ModelOutput

Objective = Callable[[nn.Module, Tensor, Tensor, Tensor], tuple[Tensor, ModelOutput]]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def mean_cosine(feat_v: Tensor | None, feat_a: Tensor | None) -> Tensor | None:
    """Mean cos(feat_v, feat_a) over the batch; None for a unimodal model."""
    if feat_v is None or feat_a is None:
        return None
    if feat_v.shape != feat_a.shape:
        raise ValueError(f"the dissimilarity term needs visual and audio features of one width, got "
                         f"{feat_v.shape[1]} and {feat_a.shape[1]} (set --frame_dim / --sound_dim equal)")
    return F.cosine_similarity(feat_v.float(), feat_a.float(), dim=1).mean()


class CrossEntropy:
    """CE + ``lambda_cos`` * mean cos(feat_v, feat_a): plain training at 0, the dissimilarity constraint above."""

    def __init__(self, lambda_cos: float = 0.0) -> None:
        self.lambda_cos = lambda_cos

    def loss(self, out, labels: Tensor) -> Tensor:
        loss = F.cross_entropy(out.logits.float(), labels)
        cos = mean_cosine(out.feat_v, out.feat_a) if self.lambda_cos else None
        return loss if cos is None else loss + self.lambda_cos * cos

    def __call__(self, model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor) -> tuple[Tensor, ModelOutput]:
        out = model(frames, audio)
        return self.loss(out, labels), out


class PGDAdversarialTraining(CrossEntropy):
    """Train on PGD examples (random start) that attack both modalities within ``eps``."""

    def __init__(self, eps: dict[str, float], steps: int, eps_units: str, lambda_cos: float = 0.0) -> None:
        super().__init__(lambda_cos)
        self.eps, self.steps, self.eps_units = eps, steps, eps_units

    def __call__(self, model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor) -> tuple[Tensor, ModelOutput]:
        attack = build_attack("pgd", _unwrap(model), self.eps, steps=self.steps,
                              alpha={m: 2.5 * e / self.steps for m, e in self.eps.items()},
                              eps_units=self.eps_units, random_start=True)
        adv_frames, adv_audio = attack(frames, audio, labels)
        out = model(adv_frames, adv_audio)
        return self.loss(out, labels), out


class Trades(CrossEntropy):
    """CE on clean inputs + ``beta`` * KL(p(x_adv) || p(x)), x_adv maximising that KL inside ``eps``."""

    def __init__(self, eps: dict[str, float], steps: int, eps_units: str, beta: float = 6.0,
                 lambda_cos: float = 0.0) -> None:
        super().__init__(lambda_cos)
        self.eps, self.steps, self.eps_units, self.beta = eps, steps, eps_units, beta

    def __call__(self, model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor) -> tuple[Tensor, ModelOutput]:
        inner = _unwrap(model)
        was_training = inner.training
        inner.eval()
        with torch.no_grad():
            clean_prob = F.softmax(inner(frames, audio).logits.float(), dim=1)
        inner.train(was_training)

        def kl_to_clean(out, _labels: Tensor) -> Tensor:
            log_adv = F.log_softmax(out.logits.float(), dim=1)
            return F.kl_div(log_adv, clean_prob, reduction="none").sum(dim=1)

        attack = build_attack("pgd", inner, self.eps, steps=self.steps,
                              alpha={m: 2.5 * e / self.steps for m, e in self.eps.items()},
                              loss=kl_to_clean, eps_units=self.eps_units, random_start=True)
        adv_frames, adv_audio = attack(frames, audio, labels)
        out = model(frames, audio)
        adv_logits = model(adv_frames, adv_audio).logits.float()
        robust = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(out.logits.float(), dim=1),
                          reduction="batchmean")
        return self.loss(out, labels) + self.beta * robust, out
