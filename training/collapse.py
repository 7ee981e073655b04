"""A collapse detector for the self-supervised localizers' training.

A contrastive localizer trained from scratch can fall into a trivial state: every clip gets nearly the same audio
and frame embedding, every map the same footprint, and audio-to-frame retrieval sits at chance (1 / batch). The
monitor measures that per batch during training, from the similarities the objective computed anyway:

* spread: the norm of the mean unit embedding over the batch (audio) and over the batch's locations (visual):
  near 1 when every embedding points the same way, about 1 / sqrt(samples) when they are spread out;
* retrieval: the fraction of clips whose audio scores its own frame highest (a pair's score its best location),
  next to chance, 1 / batch size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.distributed import DistInfo, all_reduce_sum

COLLAPSE_SPREAD = 0.9  # a modality's spread at least this ...
COLLAPSE_RETRIEVAL_FACTOR = 1.5  # ... and retrieval at most this times chance: collapsed
COLLAPSE_ACTIONS = ("warn", "stop", "off")


class TrainingCollapsed(RuntimeError):
    """Raised by ``--on_collapse stop`` when the epoch's statistics say the training collapsed."""


class CollapseMonitor:
    """Accumulates the spread and retrieval statistics over an epoch's batches (sample-weighted)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.totals = torch.zeros(5, dtype=torch.float64)  # samples, spread_a, spread_v, hits, chance

    @torch.no_grad()
    def update(self, sims: Tensor, emb_a: Tensor, emb_v: Tensor) -> None:
        """One batch: ``sims [B, B, N]`` (audio i against frame j's locations), unit embeddings ``emb_a [B, E]``
        and ``emb_v [B, E, N]``."""
        batch = sims.shape[0]
        spread_a = F.normalize(emb_a.float(), dim=1).mean(dim=0).norm()
        spread_v = F.normalize(emb_v.float(), dim=1).mean(dim=(0, 2)).norm()
        hits = (sims.float().amax(dim=2).argmax(dim=1) == torch.arange(batch, device=sims.device)).sum()
        one = torch.ones((), dtype=torch.float64, device=sims.device)
        row = torch.stack([one * batch, spread_a.double() * batch, spread_v.double() * batch, hits.double(), one])
        self.totals = self.totals.to(sims.device) + row  # on the device: no host sync per training step

    def summary(self, info: DistInfo) -> dict[str, float]:
        """The epoch's sample-weighted means over every rank: spread_a, spread_v, retrieval and its chance."""
        totals = all_reduce_sum(self.totals.clone().to(info.device), info).cpu()
        samples = max(totals[0].item(), 1.0)
        return {"spread_a": totals[1].item() / samples, "spread_v": totals[2].item() / samples,
                "retrieval": totals[3].item() / samples, "retrieval_chance": totals[4].item() / samples}


def collapse_problem(stats: dict[str, float]) -> str | None:
    """A one-line diagnosis with the numbers when ``stats`` (``CollapseMonitor.summary``) say collapsed, else None."""
    spread = max(stats["spread_a"], stats["spread_v"])
    if spread < COLLAPSE_SPREAD or stats["retrieval"] > COLLAPSE_RETRIEVAL_FACTOR * stats["retrieval_chance"]:
        return None
    return (f"the self-supervised training collapsed: embedding spread audio {stats['spread_a']:.3f}, visual "
            f"{stats['spread_v']:.3f} (1 = every embedding the same; collapse at >= {COLLAPSE_SPREAD}), "
            f"audio-to-frame retrieval {stats['retrieval']:.3f} vs chance {stats['retrieval_chance']:.3f}")
