"""The self-supervised localizers' objectives from the papers (EZ-VSL at its temperature, LVS's easy negatives,
FNAC's false-negative terms, SLAVC's momentum targets), each on a hand-made case it must get right; the collapse
detector on collapsed and healthy embeddings; the SimCLR pretraining of the frame encoder."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models import ModelOutput, build_model
from training.collapse import CollapseMonitor, collapse_problem
from training.frame_pretrain import SimCLR, _view_params, augment, nt_xent
from training.objectives import Correspondence, CrossEntropy
from training.ssl_losses import (
    AUDIO_REGULARISERS,
    SSL_OBJECTIVES,
    clip_correspondence_nce,
    clip_warmup,
    false_negative_aware_terms,
    hard_negative_nce,
    localization_correspondence_nce,
    multiple_instance_nce,
    pitch_shift,
    uniformity_loss,
    variance_covariance_loss,
)
from utils.distributed import DistInfo

pytestmark = pytest.mark.usefixtures("one_thread")

SINGLE = DistInfo()


def test_heads_carry_the_published_temperatures() -> None:
    heads = ("ssl", "ssl_lvs", "ssl_fnac", "ssl_slavc", "ssl_slavc_enc")
    temperatures = {head: build_model("smallcnn", "anet", head, cls_num=3, frame_dim=8, sound_dim=8)
                    .net_classifier.temperature for head in heads}
    assert temperatures == {"ssl": 0.03, "ssl_lvs": 0.07, "ssl_fnac": 0.03, "ssl_slavc": 0.03, "ssl_slavc_enc": 0.03}
    assert build_model("smallcnn", "anet", "ssl_avc", cls_num=3, frame_dim=8, sound_dim=8).net_classifier.ssl_loss \
        == "ezvsl+avc"


def test_lower_temperature_sharpens_the_multiple_instance_loss() -> None:
    sims = torch.full((2, 2, 3), -0.2)
    sims[0, 0, 1] = sims[1, 1, 2] = 0.6
    sims[0, 1, 0] = sims[1, 0, 1] = 0.4
    # a margin of 0.2 is worth more at EZ-VSL's 0.03 than at 0.07
    assert multiple_instance_nce(sims, 0.03) < multiple_instance_nce(sims, 0.07) / 5


def lvs_case(negative: list[float]) -> torch.Tensor:
    """Two clips: each audio matches two of its own frame's four locations (0.9, rest 0); ``negative`` is what
    each audio scores on the other frame's locations."""
    sims = torch.zeros(2, 2, 4)
    sims[0, 0] = sims[1, 1] = torch.tensor([0.9, 0.9, 0.0, 0.0])
    sims[0, 1] = sims[1, 0] = torch.tensor(negative)
    return sims


def test_lvs_easy_negative_is_scored_on_its_matching_region() -> None:
    """LVS scores another frame like the positive: on its locations above the threshold. A frame where the audio
    matches one location strongly (0.85) is a harder negative than one it matches weakly everywhere (0.2), though
    its plain mean is lower (-0.16 vs 0.2)."""
    matching_spot = lvs_case([0.85, -0.5, -0.5, -0.5])
    weak_everywhere = lvs_case([0.2, 0.2, 0.2, 0.2])
    assert matching_spot[0, 1].mean() < weak_everywhere[0, 1].mean()
    assert hard_negative_nce(matching_spot, 0.07) > hard_negative_nce(weak_everywhere, 0.07) + 0.3


def test_fnac_terms_spare_a_false_negative() -> None:
    """Clips 0 and 1 sound the same (equal audio embeddings), clip 2 differs. Scoring frame 1 as high for audio 0
    as frame 0 is what FNAC's false-negative suppression asks for; EZ-VSL's InfoNCE penalises it."""
    emb_a = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=1)
    emb_v = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [1.0, 0.0, 0.1], [0.0, 1.0, 0.1]]), dim=1)
    emb_v = emb_v[:, :, None].expand(3, 3, 2).clone()  # two identical locations per frame

    def sims(cross: float) -> torch.Tensor:
        s = torch.full((3, 3, 2), -0.5)
        for i in range(3):
            s[i, i] = 0.9
        s[0, 1] = s[1, 0] = cross
        return s

    spared, pushed = sims(0.9), sims(-0.5)
    assert false_negative_aware_terms(spared, emb_a, emb_v, 0.03) < false_negative_aware_terms(pushed, emb_a, emb_v,
                                                                                               0.03) - 0.05
    assert multiple_instance_nce(spared, 0.03) > multiple_instance_nce(pushed, 0.03) + 0.3


def test_clip_level_term_leaves_the_collapsed_fixed_point() -> None:
    """The collapsed state: every frame's first location (a padding corner) the same embedding that best matches
    the (identical) audio of every clip. EZ-VSL's hard maximum then sends gradient to that location only and
    none to the audio; the clip-level term of ``ssl_avc`` reaches every location and the audio."""
    torch.manual_seed(0)
    corner = F.normalize(torch.ones(4), dim=0)
    emb_v = F.normalize(torch.randn(3, 4, 5), dim=1) * 0.5
    emb_v[:, :, 0] = corner
    emb_v.requires_grad_(True)
    emb_a = corner.expand(3, 4).clone().requires_grad_(True)
    sims = torch.einsum("ie,jen->ijn", emb_a, emb_v)
    grad_v, grad_a = torch.autograd.grad(multiple_instance_nce(sims, 0.03), (emb_v, emb_a))
    assert grad_v[:, :, 1:].abs().max() == 0 and grad_a.abs().max() < 1e-6
    grad_v, grad_a = torch.autograd.grad(clip_correspondence_nce(emb_a, emb_v, 0.03), (emb_v, emb_a))
    assert (grad_v[:, :, 1:].abs().sum(dim=1) > 1e-3).all() and grad_a.abs().max() > 1e-3


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows), dim=-1)


def test_slavc_score_needs_the_right_clip_at_the_right_place() -> None:
    """Two frames of two locations; clip 0's object at location 0, clip 1's at location 1. The pair score is high
    only where a location both belongs to this clip's audio (softmax over the batch) and is where it sounds
    (softmax over locations): the matched layout scores lower loss than the swapped one."""
    audio = unit([1.0, 0.0], [0.0, 1.0])
    frames = torch.stack([unit([1.0, 0.0], [0.0, 0.0]).t(), unit([0.0, 0.0], [0.0, 1.0]).t()])  # [B, E, N]
    frames = frames + 1e-3  # no zero vectors
    swapped = frames.flip(0)
    matched_loss = localization_correspondence_nce((frames, frames), (audio, audio), 0.1)
    swapped_loss = localization_correspondence_nce((swapped, swapped), (audio, audio), 0.1)
    assert matched_loss < 0.3 and swapped_loss > matched_loss + 1, (matched_loss, swapped_loss)


def test_slavc_momentum_targets_follow_the_online_projections_and_get_no_gradient() -> None:
    torch.manual_seed(0)
    model = build_model("smallcnn", "anet", "ssl_slavc", cls_num=3, frame_dim=8, sound_dim=8)
    head = model.net_classifier
    assert all(torch.equal(t, o) for t, o in zip(head.target["proj_v"].parameters(), head.proj_v.parameters()))
    loss, _ = CrossEntropy()(model, torch.rand(4, 3, 1, 64, 64), torch.rand(4, 1, 2048) * 2 - 1,
                             torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is None for p in head.target.parameters())
    assert head.proj_v.weight.grad is not None and head.proj_a2.weight.grad is not None
    before = head.target["proj_a"].weight.clone()
    with torch.no_grad():
        head.proj_a.weight.add_(1.0)
    head.update_targets()
    torch.testing.assert_close(head.target["proj_a"].weight, before + (1 - head.momentum) * 1.0)


def first(net: torch.nn.Module) -> torch.nn.Parameter:
    return next(net.parameters())


def test_slavc_momentum_encoders_give_the_targets_follow_the_online_ones_and_get_no_gradient() -> None:
    """``ssl_slavc_enc``: frozen copies of both encoders; the first EMA step copies the online encoders exactly (so
    weights loaded after construction start the targets), later ones move by the momentum rule; the loss's targets
    come from the copies (equal copies: the same loss as targets from the online features; a changed copy: another
    loss), and the copies get no gradient."""
    torch.manual_seed(0)
    model = build_model("smallcnn", "anet", "ssl_slavc_enc", cls_num=3, frame_dim=8, sound_dim=8, momentum=0.9)
    head = model.net_classifier
    assert head.target["frame"] is not model.net_frame
    assert not any(name.startswith("net_classifier.encoders") for name in model.state_dict())
    frames, audio = torch.rand(4, 3, 1, 32, 32), torch.rand(4, 1, 2048) * 2 - 1
    with torch.no_grad():
        first(model.net_frame).add_(0.5)  # e.g. weights loaded after construction
    head.update_targets()
    assert all(torch.equal(t, o) for t, o in zip(head.target["frame"].parameters(), model.net_frame.parameters()))
    model.eval()  # no dropout, no EMA step inside the objective
    with torch.no_grad():
        out = model(frames, audio)
        own = SSL_OBJECTIVES["slavc"](head, out)[0]
        torch.testing.assert_close(SSL_OBJECTIVES["slavc"](head, out, inputs=(frames, audio))[0], own)
        first(head.target["sound"]).mul_(-1)
        assert not torch.allclose(SSL_OBJECTIVES["slavc"](head, out, inputs=(frames, audio))[0], own)
    model.train()
    loss, _ = CrossEntropy()(model, frames, audio, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is None for p in head.target.parameters())
    assert first(model.net_frame).grad is not None and first(model.net_sound).grad is not None
    before, online = first(head.target["frame"]).clone(), first(model.net_frame).detach().clone()
    head.update_targets()
    torch.testing.assert_close(first(head.target["frame"]), 0.9 * before + 0.1 * online)


def test_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    head = build_model("smallcnn", "anet", "ssl_fnac", cls_num=3, frame_dim=8, sound_dim=8).net_classifier
    fmap = torch.rand(2, 8, 3, 3) + 0.1
    head.train()
    assert not torch.equal(head.embed_visual(fmap), head.embed_visual(fmap))
    head.eval()
    assert torch.equal(head.embed_visual(fmap), head.embed_visual(fmap))


def test_audio_bn_removes_the_component_every_clips_audio_shares() -> None:
    """Audio features that are one large shared vector plus a small part of their own: the plain head's unit audio
    embeddings all point one way (the collapse), the ``audio_bn`` head's spread out in training and, through the
    running statistics, in evaluation, and follow each clip's own part."""
    torch.manual_seed(0)
    shared = 10 * torch.randn(1, 32)

    def features() -> torch.Tensor:
        return shared + torch.randn(64, 32)

    def spread(emb: torch.Tensor) -> float:
        return emb.mean(dim=0).norm().item()

    plain = build_model("smallcnn", "mel", "ssl", cls_num=3, frame_dim=8, sound_dim=32).net_classifier
    centred = build_model("smallcnn", "mel", "ssl", cls_num=3, frame_dim=8, sound_dim=32,
                          audio_bn=True).net_classifier
    centred.proj_a.load_state_dict(plain.proj_a.state_dict())
    feat_a = features()
    assert spread(plain.embed_audio(feat_a)) > 0.95
    centred.train()
    assert spread(centred.embed_audio(feat_a)) < 0.25
    with torch.no_grad():
        for _ in range(60):
            centred.embed_audio(features())
    centred.eval()
    emb = centred.embed_audio(feat_a)
    assert spread(emb) < 0.25
    own = F.normalize(centred.proj_a(feat_a - shared) - centred.proj_a.bias, dim=1)
    assert (emb * own).sum(dim=1).mean() > 0.8  # each clip's embedding: the direction of its own part


def test_the_collapse_monitor_leaves_audio_bn_in_its_training_mode() -> None:
    torch.manual_seed(0)
    model = build_model("smallcnn", "anet", "ssl", cls_num=3, frame_dim=8, sound_dim=8, audio_bn=True).train()
    frames, audio, labels = torch.rand(4, 3, 1, 32, 32), torch.rand(4, 1, 4096) - 0.5, torch.tensor([0, 1, 2, 0])
    Correspondence()(model, frames, audio, labels)[0].backward()
    norm = model.net_classifier.audio_norm
    assert norm.training and norm.running_mean.abs().sum() > 0
    assert all(p.grad is not None for p in model.net_sound.parameters() if p.requires_grad)


# ---------------------------------------------------------------- the collapse detector


def monitor_of(emb_a: torch.Tensor, emb_v: torch.Tensor) -> dict[str, float]:
    monitor = CollapseMonitor()
    monitor.update(torch.einsum("ie,jen->ijn", emb_a, emb_v), emb_a, emb_v)
    return monitor.summary(SINGLE)


def test_collapse_detector_flags_identical_embeddings_with_numbers() -> None:
    batch = 8
    emb_a = F.normalize(torch.ones(batch, 4) + 1e-4 * torch.randn(batch, 4), dim=1)
    emb_v = F.normalize(torch.ones(batch, 4, 5), dim=1)
    stats = monitor_of(emb_a, emb_v)
    assert stats["spread_a"] > 0.99 and stats["spread_v"] > 0.99 and stats["retrieval_chance"] == 1 / batch
    problem = collapse_problem(stats)
    assert problem is not None and "spread audio 1.000" in problem and "chance 0.125" in problem


def test_collapse_detector_flags_a_collapsed_audio_side_alone() -> None:
    """The frames differ, but every clip's audio is the same vector: every map is a function of the frame alone and
    retrieval sits at chance."""
    torch.manual_seed(0)
    emb_v = F.normalize(torch.randn(8, 16, 5), dim=1)
    emb_a = F.normalize(torch.ones(8, 16), dim=1)
    stats = monitor_of(emb_a, emb_v)
    assert stats["spread_v"] < 0.6 and stats["retrieval"] <= 1 / 8
    assert collapse_problem(stats) is not None


def test_collapse_detector_passes_spread_out_embeddings() -> None:
    torch.manual_seed(0)
    emb_a = F.normalize(torch.randn(8, 16), dim=1)
    emb_v = emb_a[:, :, None].expand(8, 16, 5).clone()  # each frame matches its own audio at every location
    stats = monitor_of(emb_a, emb_v)
    assert stats["retrieval"] == 1.0 and stats["spread_a"] < 0.6
    assert collapse_problem(stats) is None


# ---------------------------------------------------------------- SimCLR pretraining of the frame encoder


def test_augmented_views_are_seeded_per_sample_and_stay_in_range() -> None:
    images = torch.rand(3, 3, 32, 32)
    params = torch.stack([_view_params(0, 1, i, 0) for i in range(3)])
    views = augment(images, params)
    assert views.shape == images.shape and views.min() >= 0 and views.max() <= 1
    torch.testing.assert_close(augment(images[1:2], params[1:2]), views[1:2])  # independent of the batch
    other = torch.stack([_view_params(0, 1, i, 1) for i in range(3)])
    assert not torch.allclose(augment(images, other), views)


def test_nt_xent_rewards_matching_twins() -> None:
    torch.manual_seed(0)
    z = torch.randn(6, 8)
    assert nt_xent(z, z + 0.01 * torch.randn(6, 8)) < 0.5 < nt_xent(z, torch.randn(6, 8))
    with pytest.raises(ValueError, match=r"\[B, E\]"):
        nt_xent(z, z[:4])


def test_simclr_learns_to_tell_images_apart() -> None:
    """Eight images of different colours and stripes: after a few SimCLR steps a view of each finds its twin among
    the other image's views far above chance (1/8) and above the untrained encoder."""
    torch.manual_seed(0)
    images = torch.zeros(8, 3, 32, 32)
    for i in range(8):
        images[i, i % 3] = 0.8
        images[i, :, :, (i * 4):(i * 4 + 6)] = 0.2 + 0.1 * (i % 4)
    model = SimCLR(build_model("smallcnn", "anet", "visual", cls_num=2, frame_dim=16).net_frame, proj_dim=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def twin_accuracy(step: int) -> tuple[torch.Tensor, float]:
        v1 = augment(images, torch.stack([_view_params(1, step, i, 0) for i in range(8)]))
        v2 = augment(images, torch.stack([_view_params(1, step, i, 1) for i in range(8)]))
        z1, z2 = model(v1), model(v2)
        sims = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).t()
        return nt_xent(z1, z2), (sims.argmax(dim=1) == torch.arange(8)).float().mean().item()

    model.eval()
    with torch.no_grad():
        _, untrained = twin_accuracy(1000)
    model.train()
    for step in range(80):
        loss, _ = twin_accuracy(step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        _, accuracy = twin_accuracy(1000)
    assert accuracy >= 0.6 and accuracy > untrained, (untrained, accuracy)


def collapsed_audio(batch: int = 16, dim: int = 8) -> torch.Tensor:
    """Unit audio embeddings all within a few degrees of one direction (spread about 0.99)."""
    torch.manual_seed(0)
    return F.normalize(torch.ones(dim) + 0.1 * torch.randn(batch, dim), dim=1)


def spread(emb: torch.Tensor) -> float:
    return F.normalize(emb, dim=1).mean(dim=0).norm().item()


@pytest.mark.parametrize("regulariser", ["uniformity", "vicreg"])
def test_audio_regulariser_pushes_collapsed_embeddings_apart(regulariser: str) -> None:
    """Gradient descent on the regulariser alone, from nearly identical embeddings, spreads them out."""
    emb = collapsed_audio().clone().requires_grad_(True)
    assert spread(emb.detach()) > 0.95
    optimizer = torch.optim.SGD([emb], lr=0.5)
    start = AUDIO_REGULARISERS[regulariser](emb).item()
    for _ in range(100):
        optimizer.zero_grad()
        AUDIO_REGULARISERS[regulariser](emb).backward()
        optimizer.step()
    assert AUDIO_REGULARISERS[regulariser](emb).item() < start
    assert spread(emb.detach()) < 0.5


def test_audio_regularisers_rank_collapsed_above_spread_embeddings() -> None:
    torch.manual_seed(1)
    spread_out = F.normalize(torch.randn(16, 8), dim=1)
    for regulariser in (uniformity_loss, variance_covariance_loss):
        assert regulariser(collapsed_audio()) > regulariser(spread_out) + 0.3
    assert uniformity_loss(torch.ones(4, 8)).item() == pytest.approx(0.0, abs=1e-6)
    assert variance_covariance_loss(torch.ones(4, 8)).item() == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="at least 2"):
        uniformity_loss(torch.ones(1, 8))


def test_clip_warmup_makes_the_audio_clip_specific() -> None:
    """A tiny problem where the audio starts collapsed: every clip's audio feature is one shared vector plus a small
    clip code, and clip i's frame shows that code over three of its nine locations among random clutter. Trained
    with the clip-level warm-up objective alone (the head's projections), audio-to-frame retrieval rises from chance
    (1/12) to every clip on the frame's mean embedding and to most clips on its best location."""
    torch.manual_seed(0)
    clips, dim, locations = 12, 16, 9
    codes = F.normalize(torch.randn(clips, dim), dim=1)
    feat_a = 5 * torch.ones(dim) + 0.5 * codes
    fmap = 0.3 * torch.randn(clips, dim, locations)
    fmap[:, :, :3] += codes[:, :, None]
    fmap = fmap.reshape(clips, dim, 3, 3)
    head = build_model("smallcnn", "anet", "ssl", cls_num=3, frame_dim=dim, sound_dim=dim).net_classifier
    out = ModelOutput(logits=torch.zeros(clips, 3), feat_v=fmap.amax(dim=(2, 3)), feat_a=feat_a, fmap_v=fmap)
    truth = torch.arange(clips)

    def retrieval() -> tuple[float, float]:
        with torch.no_grad():
            sims = head.cross_similarity(out.feat_a, out.fmap_v)
        return ((sims.mean(dim=2).argmax(dim=1) == truth).float().mean().item(),
                (sims.amax(dim=2).argmax(dim=1) == truth).float().mean().item())

    assert max(retrieval()) < 0.2 and spread(head.embed_audio(feat_a).detach()) > 0.9
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(200):
        optimizer.zero_grad()
        clip_warmup(head, out)[0].backward()
        optimizer.step()
    pooled, best_location = retrieval()
    assert pooled == 1.0 and best_location > 0.5


def test_warmup_epochs_swap_the_objective_then_hand_over() -> None:
    """During --ssl_warmup_epochs the loss is the clip-level term (plus the probe's cross-entropy), afterwards the
    head's own; the collapse monitor sees both; a regulariser adds its weighted term."""
    torch.manual_seed(0)
    model = build_model("smallcnn", "anet", "ssl", cls_num=3, frame_dim=8, sound_dim=8).eval()
    frames, audio, labels = torch.rand(4, 3, 1, 32, 32), torch.rand(4, 1, 4096) - 0.5, torch.tensor([0, 1, 2, 0])
    objective = Correspondence()
    objective.configure({"uniformity": 0.0}, warmup_epochs=2)
    assert objective.audio_reg == {}
    with torch.no_grad():
        out = model(frames, audio)
        head = model.net_classifier
        probe = F.cross_entropy(head.probe_logits(out.feat_v, out.feat_a), labels)
        clip_level = clip_warmup(head, out)[0] + probe
        own = SSL_OBJECTIVES["ezvsl"](head, out)[0] + probe
        uniform = uniformity_loss(head.embed_audio(out.feat_a))
        objective.epoch = 1
        assert objective(model, frames, audio, labels)[0].item() == pytest.approx(clip_level.item(), rel=1e-5)
        objective.epoch = 2
        assert objective(model, frames, audio, labels)[0].item() == pytest.approx(own.item(), rel=1e-5)
        objective.configure({"uniformity": 0.5})
        assert objective(model, frames, audio, labels)[0].item() == pytest.approx((own + 0.5 * uniform).item(),
                                                                                   rel=1e-5)
    assert objective.monitor.totals[0].item() == 12
    with pytest.raises(ValueError, match="unknown audio regulariser"):
        objective.configure({"barlow": 1.0})


def test_pitch_shift_moves_each_clips_pitch_within_the_factor() -> None:
    """A 400 Hz tone in every clip: after the shift each clip's tone lies within [400 / F, 400 F], the clips differ,
    the length and the peak stay; factor 1 leaves the audio as it is (up to its random start)."""
    rate, length = 11025, 4096
    tone = torch.sin(2 * math.pi * 400 * torch.arange(length) / rate).expand(6, 1, length).clone()
    torch.manual_seed(0)
    shifted = pitch_shift(tone, 1.5)
    assert shifted.shape == tone.shape and shifted.abs().max() <= 1.0
    peaks = torch.fft.rfft(shifted[:, 0]).abs().argmax(dim=1).float() * rate / length
    assert ((peaks > 400 / 1.5 - 5) & (peaks < 400 * 1.5 + 5)).all()
    assert peaks.max() - peaks.min() > 50
    same = torch.fft.rfft(pitch_shift(tone, 1.0)[:, 0]).abs().argmax(dim=1).float() * rate / length
    assert torch.allclose(same, torch.full_like(same, 400.0), atol=rate / length)
    with pytest.raises(ValueError, match="max_factor"):
        pitch_shift(tone, 0.5)
