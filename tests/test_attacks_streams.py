"""A sample's random draws are its own: random starts, restarts and Square's search give a sample the same
adversarial input alone, inside a batch, in another batch order or another batch."""
from __future__ import annotations

import pytest
import torch

from attacks import build_attack
from attacks.streams import SampleStreams, sample_seed
from attacks.threat import ThreatModel
from tests.test_attacks_aa import train

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    "pgd-random-start": ("pgd", ThreatModel(0.05, 0.02), {"steps": 3, "random_start": True}),
    "pgd-restarts": ("pgd", ThreatModel(0.02, 0.005), {"steps": 2, "random_start": True, "restarts": 3}),
    "apgd-random-start": ("apgd", ThreatModel(0.05, 0.02), {"steps": 4, "random_start": True}),
    "apgd-t-random-start": ("apgd-t", ThreatModel(0.05, 0.02), {"steps": 3, "random_start": True,
                                                                "n_target_classes": 2}),
    "square-linf": ("square", ThreatModel(0.05, 0.02), {"queries": 15}),
    "square-l2": ("square", ThreatModel(1.0, 0.3, norm="l2", units="pixel"), {"queries": 15}),
    "pgd-joint-l2": ("pgd", ThreatModel(1.0, 0.3, norm="l2", units="pixel", joint_eps=1.0),
                     {"steps": 2, "random_start": True}),
}


@pytest.fixture(scope="module")
def audio_visual():
    return train("concat")


def same(a: torch.Tensor, b: torch.Tensor, threat: ThreatModel) -> bool:
    """Bit for bit under L-inf (sign steps); under L2 up to the rounding of batched norms and gradients (a few
    float32 ulps, also without any random draw; a sample given another's draws moves by a share of eps)."""
    return torch.equal(a, b) if threat.norm == "linf" else torch.allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_sample_gets_the_same_result_in_any_batch(audio_visual, case: str) -> None:
    name, threat, options = CASES[case]
    model, (frames, audio, labels) = audio_visual
    frames, audio, labels = frames[:8], audio[:8], labels[:8]
    ids = torch.arange(100, 108)
    attack = build_attack(name, model, threat, seed=5, **options)
    adv_f, adv_a = attack(frames, audio, labels, sample_ids=ids)
    # the batch reversed, and each of samples 0 and 5 alone (ids travel with their samples)
    order = torch.arange(7, -1, -1)
    rev_f, rev_a = attack(frames[order], audio[order], labels[order], sample_ids=ids[order])
    assert same(rev_f[order], adv_f, threat) and same(rev_a[order], adv_a, threat)
    for i in (0, 5):
        one_f, one_a = attack(frames[i:i + 1], audio[i:i + 1], labels[i:i + 1], sample_ids=ids[i:i + 1])
        assert same(one_f[0], adv_f[i], threat) and same(one_a[0], adv_a[i], threat)
    # the draws are random after all: other ids (another place in the dataset) give other points
    moved_f, _ = attack(frames, audio, labels, sample_ids=ids + 1000)
    assert not torch.allclose(moved_f, adv_f, atol=1e-6)


def test_without_ids_a_sample_s_draws_follow_its_place_in_the_batch(audio_visual) -> None:
    model, (frames, audio, labels) = audio_visual
    attack = build_attack("pgd", model, ThreatModel(0.05, 0.02), steps=1, random_start=True, seed=3)
    first = attack(frames[:4], audio[:4], labels[:4])[0]
    again = attack(frames[:4], audio[:4], labels[:4], sample_ids=torch.arange(4))[0]
    assert torch.equal(first, again)


def test_streams_are_per_sample_and_subsets_continue_them() -> None:
    like = torch.zeros(())
    full = SampleStreams.seeded(7, [3, 9, 4])
    first = full.rand((5,), like)
    alone = SampleStreams.seeded(7, [9])
    torch.testing.assert_close(alone.rand((5,), like)[0], first[1], rtol=0, atol=0)
    # a subset draws on from where its samples stopped
    part = full.subset(torch.tensor([1]))
    torch.testing.assert_close(part.rand((5,), like)[0], alone.rand((5,), like)[0], rtol=0, atol=0)
    assert len({sample_seed(7, i) for i in range(1000)} | {sample_seed(8, i) for i in range(1000)}) == 2000
    draws = SampleStreams.seeded(0, range(64)).randint(0, 2, (), "cpu")
    assert 16 < int(draws.sum()) < 48  # neighbouring ids do not share their first draw
