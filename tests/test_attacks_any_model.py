"""Attacks on any two-input model: a user's ``nn.Module`` called as ``model(frames, audio)`` that
returns logits, a tuple whose first item is the logits, an object with a ``logits`` attribute, or a
``ModelOutput``."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks import as_model_output, build_attack
from attacks.threat import ThreatModel
from models import ModelOutput

pytestmark = pytest.mark.usefixtures("one_thread")

C = 4
ATTACKS = {"pgd": {"steps": 5}, "apgd": {"steps": 5}, "fgsm": {}}


class TwoStream(nn.Module):
    """A user's model: a tiny conv net on the mean frame, one on the waveform, logits from both."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.audio = nn.Sequential(nn.Conv1d(1, 8, 9, stride=4), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.head = nn.Linear(16, C)

    def forward(self, frames: Tensor, audio: Tensor) -> Tensor:
        return self.head(torch.cat([self.visual(frames.mean(dim=2)), self.audio(audio)], dim=1))


class ReturnsTuple(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(frames, audio)
        return logits, logits.softmax(dim=1)


class ReturnsModelOutput(ReturnsTuple):
    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        return ModelOutput(self.model(frames, audio), None, None, None)


class ReturnsNamespace(ReturnsTuple):
    """Like a Hugging Face model: an object with a ``logits`` attribute."""

    def forward(self, frames: Tensor, audio: Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.model(frames, audio), hidden_states=None)


@pytest.fixture(scope="module")
def user_model() -> tuple[nn.Module, tuple[Tensor, Tensor, Tensor]]:
    torch.manual_seed(0)
    frames = torch.rand(8, 3, 2, 12, 12)
    audio = 0.5 * torch.rand(8, 1, 400) - 0.25
    return TwoStream().eval(), (frames, audio, torch.arange(8) % C)


def ce(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


@pytest.mark.parametrize("wrapper", [lambda m: m, ReturnsTuple, ReturnsNamespace])
@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_on_a_user_model_match_the_same_model_returning_a_model_output(user_model, name: str,
                                                                               wrapper) -> None:
    model, (frames, audio, labels) = user_model
    eps = {"visual": 0.03, "audio": 0.02}
    adv = build_attack(name, wrapper(model), ThreatModel.of(eps, units="pixel"), **ATTACKS[name])(frames, audio, labels)
    reference = build_attack(name, ReturnsModelOutput(model), ThreatModel.of(eps, units="pixel"), **ATTACKS[name])(
        frames, audio, labels)
    assert all(torch.equal(a, b) for a, b in zip(adv, reference))
    assert (adv[0] - frames).abs().max() <= eps["visual"] + 1e-6
    assert (adv[1] - audio).abs().max() <= eps["audio"] + 1e-6
    with torch.no_grad():
        assert ce(model(*adv), labels).mean() > ce(model(frames, audio), labels).mean()


@pytest.mark.parametrize("name", ATTACKS)
def test_l2_attacks_on_a_user_model(user_model, name: str) -> None:
    model, (frames, audio, labels) = user_model
    threat = ThreatModel.of({"visual": 0.5, "audio": 0.3}, norm="l2", units="pixel")
    adv_frames, adv_audio = build_attack(name, model, threat,
                                         **ATTACKS[name])(frames, audio, labels)
    assert (adv_frames - frames).flatten(1).norm(dim=1).max() <= 0.5 * (1 + 1e-5)
    with torch.no_grad():
        assert ce(model(adv_frames, adv_audio), labels).mean() > ce(model(frames, audio), labels).mean()


def test_ce_cos_on_a_model_without_features_raises(user_model) -> None:
    model, (frames, audio, labels) = user_model
    with pytest.raises(ValueError, match="needs the model's features.*TwoStream returns Tensor"):
        build_attack("pgd", model, ThreatModel.of({"visual": 0.03}, units="pixel"),
                     loss="ce+cos")(frames, audio, labels)


def test_as_model_output() -> None:
    logits = torch.randn(3, 5)
    features = ModelOutput(logits, torch.ones(3, 2), torch.ones(3, 2), None)
    assert as_model_output(features) is features
    for out in (logits, (logits, "anything"), [logits], SimpleNamespace(logits=logits)):
        converted = as_model_output(out)
        assert converted.logits is logits and converted.feat_v is None and converted.feat_a is None
    with pytest.raises(TypeError, match="the model returned dict"):
        as_model_output({"logits": logits})
    with pytest.raises(ValueError, match=r"logits must have shape \[B, C\]"):
        as_model_output(torch.randn(3, 5, 2))
