"""Contrastive objectives of the self-supervised localizers (``models.correspondence``), without labels.

Each entry of ``SSL_OBJECTIVES`` takes the head and the model's output and returns ``(loss, sims)``: the loss and
the detached audio-to-frame similarities ``[B_audio, B_image, N]`` of the head's map projection (for the collapse
monitor). The similarity tensors hold clip i's audio against every location of clip j's frame; i = j are the pairs.

* ``ezvsl`` (EZ-VSL, Mo & Morgado 2022): multiple-instance InfoNCE, a pair's score its best location;
* ``ezvsl+avc``: EZ-VSL plus clip-level audio-visual correspondence (InfoNCE on the frame's mean embedding);
* ``lvs`` (LVS, Chen et al. 2021): soft-thresholded positive region, hard negatives inside the image, and the
  other images' soft-thresholded positive regions as easy negatives;
* ``fnac`` (FNAC, Sun et al. 2023): EZ-VSL plus false-negative suppression (the cross-modal score matrix pulled
  towards the audio-audio and image-image similarities) and true-negative enhancement;
* ``slavc`` (SLAVC, Mo & Morgado 2022): per location, a softmax over the batch (which clip's audio) times a
  softmax over locations (where in the frame), against momentum targets of the other modality (from momentum
  encoders too when the head has them: the objective then also takes the batch's ``inputs``).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import ModelOutput

LVS_POSITIVE_THRESHOLD = 0.65  # LVS: similarity above which a location is the positive
LVS_NEGATIVE_THRESHOLD = 0.4  # ... and below which it is a hard negative inside the image
LVS_MASK_TEMPERATURE = 0.03  # softness of those two thresholds (LVS's sigmoid temperature)
FNAC_FOREGROUND = 0.6  # FNAC: min-max normalised map value above which a location is foreground


def _check_pairs(sims: Tensor, name: str) -> None:
    if sims.dim() != 3 or sims.shape[0] != sims.shape[1]:
        raise ValueError(f"{name} needs similarities [B, B, N], got {tuple(sims.shape)}")


def multiple_instance_nce(sims: Tensor, temperature: float) -> Tensor:
    """EZ-VSL's multiple-instance InfoNCE on ``sims [B_audio, B_image, N]``: the score of a pair is its best
    location's similarity; the loss is the mean of the audio-to-images and the image-to-audios cross-entropies of
    the score matrix divided by ``temperature``."""
    _check_pairs(sims, "multiple_instance_nce")
    scores = sims.float().amax(dim=2) / temperature
    targets = torch.arange(scores.shape[0], device=scores.device)
    return 0.5 * (F.cross_entropy(scores, targets) + F.cross_entropy(scores.t(), targets))


def _soft_region_mean(sims: Tensor, threshold: float, above: bool = True) -> Tensor:
    """Mean of ``sims`` over its last axis weighted by a sigmoid mask of the values above (or below) ``threshold``."""
    mask = torch.sigmoid((sims - threshold) / LVS_MASK_TEMPERATURE)
    if not above:
        mask = 1 - mask
    return (mask * sims).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1e-12)


def hard_negative_nce(sims: Tensor, temperature: float) -> Tensor:
    """LVS's loss on ``sims [B_audio, B_image, N]``: per clip, the positive is the mean similarity of its own
    frame's locations weighted by a soft mask of those above ``LVS_POSITIVE_THRESHOLD``, a hard negative the mean
    weighted by a soft mask of those below ``LVS_NEGATIVE_THRESHOLD``, and each other frame an easy negative
    scored as the positive is (its locations above the positive threshold); InfoNCE over them at
    ``temperature`` (0.07 in LVS)."""
    _check_pairs(sims, "hard_negative_nce")
    sims = sims.float()
    batch = sims.shape[0]
    own = sims.diagonal(dim1=0, dim2=1).t()  # [B, N]
    positive = _soft_region_mean(own, LVS_POSITIVE_THRESHOLD)
    hard = _soft_region_mean(own, LVS_NEGATIVE_THRESHOLD, above=False)
    easy = _soft_region_mean(sims, LVS_POSITIVE_THRESHOLD)
    easy = easy.masked_fill(torch.eye(batch, dtype=torch.bool, device=sims.device), -math.inf)
    logits = torch.cat([positive[:, None], hard[:, None], easy], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=sims.device))


def _row_softmax_l1(first: Tensor, second: Tensor) -> Tensor:
    return F.l1_loss(torch.softmax(first, dim=1), torch.softmax(second, dim=1))


def false_negative_aware_terms(sims: Tensor, emb_a: Tensor, emb_v: Tensor, temperature: float) -> Tensor:
    """FNAC's three regularisers (summed, unweighted) on ``sims [B_audio, B_image, N]``, the unit audio embeddings
    ``emb_a [B, E]`` and the unit location embeddings ``emb_v [B, E, N]``. Row by row (clip i), L1 between
    softmaxes at ``temperature`` of:

    * FNS (audio): audio i's similarity to every clip's audio, and frame i's scores against every audio;
    * FNS (visual): frame i's mean embedding's similarity to every frame's, and the same scores;
    * TNE: audio i's similarity to every audio, and frame i's foreground (map above ``FNAC_FOREGROUND`` after
      min-max normalisation) similarity to every frame's foreground.

    Clips that sound alike or look alike are thereby not pushed apart as hard as true negatives."""
    _check_pairs(sims, "false_negative_aware_terms")
    scores = (sims.float().amax(dim=2) / temperature).t()  # [image, audio]
    audio_attn = emb_a @ emb_a.t() / temperature
    pooled = emb_v.mean(dim=2)
    image_attn = pooled @ pooled.t() / temperature
    own = sims.diagonal(dim1=0, dim2=1).t().detach()  # [B, N]
    low, high = own.amin(dim=1, keepdim=True), own.amax(dim=1, keepdim=True)
    foreground = ((own - low) / (high - low + 1e-5) > FNAC_FOREGROUND).float()
    fg = (emb_v * foreground[:, None]).mean(dim=2)
    fg_attn = fg @ fg.t() / temperature
    return _row_softmax_l1(audio_attn, scores) + _row_softmax_l1(image_attn, scores) + \
        _row_softmax_l1(audio_attn, fg_attn)


def localization_correspondence_nce(online_v: tuple[Tensor, Tensor], target_a: tuple[Tensor, Tensor],
                                    temperature: float) -> Tensor:
    """SLAVC's score of every (frame, audio) pair and its cross-entropy over the audios of each frame.

    ``online_v``: the two projections' unit location embeddings ``[B, E, N]``; ``target_a``: the other modality's
    two unit embeddings ``[B, E]``. At each location, p1 = softmax over the batch's audios of the first
    projection's similarity (which clip sounds here), p2 = softmax over the frame's locations of the second's
    (where this audio sounds); a pair's log-score is log sum over locations of p1 * p2."""
    (v1, v2), (a1, a2) = online_v, target_a
    p1 = torch.softmax(torch.einsum("jen,ie->jin", v1, a1).float() / temperature, dim=1)
    p2 = torch.softmax(torch.einsum("jen,ie->jin", v2, a2).float() / temperature, dim=2)
    scores = torch.log((p1 * p2).sum(dim=2).clamp_min(1e-30))  # [image, audio]
    return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))


def _ezvsl(head: nn.Module, out: ModelOutput) -> tuple[Tensor, Tensor]:
    sims = head.cross_similarity(out.feat_a, out.fmap_v)
    return multiple_instance_nce(sims, head.temperature), sims.detach()


def clip_correspondence_nce(emb_a: Tensor, emb_v: Tensor, temperature: float) -> Tensor:
    """Clip-level InfoNCE in both directions between unit audio embeddings ``[B, E]`` and each frame's mean unit
    location embedding (``emb_v [B, E, N]``, re-normalised)."""
    pooled = F.normalize(emb_v.float().mean(dim=2), dim=1)
    scores = emb_a.float() @ pooled.t() / temperature
    targets = torch.arange(scores.shape[0], device=scores.device)
    return 0.5 * (F.cross_entropy(scores, targets) + F.cross_entropy(scores.t(), targets))


def _ezvsl_avc(head: nn.Module, out: ModelOutput) -> tuple[Tensor, Tensor]:
    emb_a, emb_v = head.embed_audio(out.feat_a), head.embed_visual(out.fmap_v)
    sims = torch.einsum("ie,jen->ijn", emb_a, emb_v)
    loss = multiple_instance_nce(sims, head.temperature)
    return loss + head.avc_weight * clip_correspondence_nce(emb_a, emb_v, head.temperature), sims.detach()


def _lvs(head: nn.Module, out: ModelOutput) -> tuple[Tensor, Tensor]:
    sims = head.cross_similarity(out.feat_a, out.fmap_v)
    return hard_negative_nce(sims, head.temperature), sims.detach()


def _fnac(head: nn.Module, out: ModelOutput) -> tuple[Tensor, Tensor]:
    emb_a, emb_v = head.embed_audio(out.feat_a), head.embed_visual(out.fmap_v)
    sims = torch.einsum("ie,jen->ijn", emb_a, emb_v)
    loss = 2 * multiple_instance_nce(sims, head.temperature)  # FNAC sums the two directions
    if head.fnac_weight:
        loss = loss + head.fnac_weight * false_negative_aware_terms(sims, emb_a.float(), emb_v.float(),
                                                                   head.temperature)
    return loss, sims.detach()


def _slavc(head: nn.Module, out: ModelOutput, inputs: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """SLAVC's loss; with ``inputs`` (the batch's frames and audio) the targets' features come from the head's
    momentum encoders (``ssl_slavc_enc``), else from the online encoders' features, detached."""
    if head.training:
        head.update_targets()
    v1, v2, a1, a2 = head.embeddings(out.feat_a, out.fmap_v)
    with torch.no_grad():
        feat_a, fmap_v = (out.feat_a, out.fmap_v) if inputs is None else head.target_features(*inputs)
        tv1, tv2, ta1, ta2 = head.embeddings(feat_a, fmap_v, target=True)
    # frames trained against target audio, audio trained against target frames (the same pair scores)
    image_side = localization_correspondence_nce((v1, v2), (ta1, ta2), head.temperature)
    audio_side = localization_correspondence_nce((tv1, tv2), (a1, a2), head.temperature)
    sims = torch.einsum("ie,jen->ijn", a1, v1).detach()
    return image_side + audio_side, sims


def uniformity_loss(emb: Tensor, t: float = 2.0) -> Tensor:
    """Wang & Isola's (2020) uniformity of unit embeddings ``emb [B, E]``: log of the mean over distinct pairs of
    exp(-t ||e_i - e_j||^2). Lowest when the embeddings spread over the sphere, 0 when they all coincide; its
    gradient pushes close embeddings apart however collapsed they are."""
    emb = F.normalize(emb.float(), dim=1)
    batch = emb.shape[0]
    if batch < 2:
        raise ValueError(f"uniformity_loss needs at least 2 embeddings, got {batch}")
    distances = torch.pdist(emb).pow(2)
    return torch.logsumexp(-t * distances, dim=0) - math.log(distances.numel())


def variance_covariance_loss(emb: Tensor, eps: float = 1e-4) -> Tensor:
    """VICReg's (Bardes et al. 2022) variance and covariance terms on unit embeddings ``emb [B, E]`` scaled by
    sqrt(E), so that embeddings spread uniformly over the sphere have a standard deviation near 1 per dimension:
    mean over dimensions of max(0, 1 - std) (the batch's embeddings may not all point one way: sum of the variances
    = E (1 - |mean unit embedding|^2)) plus the squared off-diagonal covariances summed and divided by E (the
    dimensions may not carry one signal)."""
    batch, dim = emb.shape
    if batch < 2:
        raise ValueError(f"variance_covariance_loss needs at least 2 embeddings, got {batch}")
    emb = F.normalize(emb.float(), dim=1) * math.sqrt(dim)
    centred = emb - emb.mean(dim=0)
    std = torch.sqrt(centred.var(dim=0) + eps)
    cov = centred.t() @ centred / (batch - 1)
    off_diagonal = cov - torch.diag(cov.diagonal())
    return F.relu(1 - std).mean() + off_diagonal.pow(2).sum() / dim


def pitch_shift(audio: Tensor, max_factor: float) -> Tensor:
    """Each clip of ``audio [B, 1, L]`` resampled by its own factor r, log-uniform in [1 / max_factor, max_factor]
    (r > 1 raises the pitch and speeds the clip up), read from a random start and wrapping around, length kept;
    linear interpolation. Draws from torch's global generator."""
    if max_factor < 1:
        raise ValueError(f"max_factor must be >= 1, got {max_factor}")
    batch, _, length = audio.shape
    log_max = math.log(max_factor)
    rate = torch.exp((torch.rand(batch, 1, device=audio.device) * 2 - 1) * log_max)
    start = torch.rand(batch, 1, device=audio.device) * length
    position = torch.remainder(torch.arange(length, device=audio.device) * rate + start, length)
    low = position.floor().long()
    high = torch.remainder(low + 1, length)
    weight = (position - low).unsqueeze(1).to(audio.dtype)
    wave_low = audio.gather(2, low.unsqueeze(1))
    wave_high = audio.gather(2, high.unsqueeze(1))
    return wave_low + weight * (wave_high - wave_low)


AUDIO_REGULARISERS: dict[str, Callable[[Tensor], Tensor]] = {
    "uniformity": uniformity_loss, "vicreg": variance_covariance_loss}


def clip_warmup(head: nn.Module, out: ModelOutput) -> tuple[Tensor, Tensor]:
    """The warm-up objective of ``--ssl_warmup_epochs``: clip-level audio-visual correspondence only (InfoNCE
    between the audio and the frame's mean location embedding, at the head's temperature), which reaches every
    location and every clip's audio, so the audio can become clip-specific before the map objective."""
    emb_a, emb_v = head.embed_audio(out.feat_a), head.embed_visual(out.fmap_v)
    sims = torch.einsum("ie,jen->ijn", emb_a, emb_v)
    return clip_correspondence_nce(emb_a, emb_v, head.temperature), sims.detach()


SSL_OBJECTIVES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "ezvsl": _ezvsl, "ezvsl+avc": _ezvsl_avc, "lvs": _lvs, "fnac": _fnac, "slavc": _slavc}
