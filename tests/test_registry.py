"""One registry drives the attacks everywhere: adding one is a class plus a registration line, and it shows in
the command line, the engine and the README's table; threat models are validated in one place."""
from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import arguments
import main_attack
from attacks import (
    ATTACKS,
    CASCADES,
    Attack,
    ThreatModel,
    attack_table_markdown,
    black_box_attacks,
    build_attack,
    describe,
    unsupported,
)
from evaluation.robustness.engine import AttackEngine
from evaluation.robustness.protocol import Budget
from models.registry import UnknownNameError
from utils.distributed import DistInfo

README = Path(__file__).resolve().parents[1] / "README.md"


class UniformNoise(Attack):
    """A test attack: one step of ``alpha`` along random signs."""

    summary = "random signs (a test attack)"
    family = "black-box"
    uses_loss = False
    norms = ("linf",)
    joint_ball = False
    settings = {"steps": "attack_steps", "seed": "seed"}

    def __init__(self, model, eps, *, steps: int = 1, seed: int | None = None) -> None:
        super().__init__(model, eps, steps=steps, seed=seed)

    def direction(self, region, grads, state):
        return {m: torch.randint(0, 2, g.shape, generator=torch.Generator().manual_seed(self.seed or 0))
                .mul(2).sub(1).to(g) for m, g in grads.items()}


@pytest.fixture
def noise_attack() -> Iterator[str]:
    ATTACKS.register("noise-test")(UniformNoise)
    try:
        yield "noise-test"
    finally:
        ATTACKS.unregister("noise-test")


def test_the_readme_table_is_the_registry_table() -> None:
    text = README.read_text()
    block = re.search(r"<!-- attack-table:start -->\n(.*?)<!-- attack-table:end -->", text, re.S)
    assert block is not None, "README.md lost its attack table markers"
    assert block.group(1) == attack_table_markdown(), "run: python scripts/attack_table.py --write README.md"


def test_a_new_attack_is_one_class_and_one_line_and_shows_everywhere(noise_attack: str) -> None:
    assert noise_attack in arguments.attack_type_choices()
    assert f"shift+{noise_attack}" in arguments.attack_type_choices()
    assert f"| `{noise_attack}` | random signs (a test attack) | black-box |" in attack_table_markdown()
    assert noise_attack in black_box_attacks()
    assert unsupported(noise_attack, ThreatModel(1.0, norm="l2", units="pixel")) == \
        f"'{noise_attack}' does not support L2 budgets"
    args = main_attack.parse_args(["--dataset", "MUSIC", "--attack_type", noise_attack, "--attack_steps", "3",
                                   "--seed", "7"])
    engine = AttackEngine(torch.nn.Identity(), args, DistInfo(), [Budget(0.0, 0.01)], args.attack_type)
    attack = engine._build(noise_attack, Budget(0.0, 0.01), None, None)
    assert isinstance(attack, UniformNoise) and (attack.steps, attack.seed) == (3, 7)  # the flags it declares


def test_the_engine_reads_each_attack_s_own_flags() -> None:
    args = argparse.Namespace(attack_steps=4, attack_alpha=None, apgd_steps=6, apgd_targets=3, random_start=False,
                              restarts=1, eot_iter=1, seed=0, square_queries=11, square_p_init=0.5)
    engine = AttackEngine(torch.nn.Identity(), args, DistInfo(), [Budget(0.0, 0.01)], ["pgd"])
    built = {name: engine._build(name, Budget(0.0, 0.01), None, None)
             for name in ("pgd", "mim", "apgd", "apgd-t", "fab-t", "square")}
    assert built["pgd"].steps == built["mim"].steps == 4
    assert built["apgd"].steps == built["apgd-t"].steps == 6 and built["apgd-t"].n_target_classes == 3
    assert (built["fab-t"].steps, built["fab-t"].n_target_classes) == (6, 3)  # AutoAttack's: as APGD-T's
    assert (built["square"].queries, built["square"].p_init) == (11, 0.5)
    assert not built["apgd"].random_start  # alone, APGD starts where --random_start says
    # in the cascade, APGD-CE and APGD-T start at a random point of the ball (AutoAttack), never restart
    args.random_start, args.restarts = False, 3
    for component in CASCADES.get("autoattack").components:
        attack = engine._build(component.attack, Budget(0.0, 0.01), None, component)
        assert attack.restarts == 1
        if component.attack.startswith("apgd"):
            assert attack.random_start and attack.seed == 0


def test_unknown_attacks_are_errors_never_defaults() -> None:
    with pytest.raises(UnknownNameError, match="unknown attack 'cw'"):
        describe("cw")
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("cw", torch.nn.Identity(), {"visual": 0.1})


def test_attacks_describe_what_they_support() -> None:
    joint = ThreatModel(1.0, 0.5, norm="l2", units="pixel", joint_eps=1.0)
    assert unsupported("square", joint) == "'square' does not support L2 joint budgets"
    assert unsupported("autoattack", joint) == "'autoattack' does not support L2 joint budgets"
    assert unsupported("apgd", joint) is None and unsupported("aa", num_classes=3) is not None
    assert describe("aa").cascade is not None and [c.name for c in describe("aa").cascade.components] == [
        "apgd-ce", "apgd-t", "fab-t", "square"]
    assert describe("square").black_box and not describe("pgd").black_box and not describe("apgd-t").uses_loss


@pytest.mark.parametrize("fields,message", [
    (dict(norm="l2", units="normalized"), "needs eps_units='pixel'"),
    (dict(norm="l1"), "norm must be one of"),
    (dict(joint_eps=1.0, units="pixel"), "joint_eps needs norm='l2'"),
    (dict(norm="l2", units="pixel", joint_eps=1.0, eps_audio=0.0), "unit budget > 0 for both"),
    (dict(audio_eps_db=3.0), "audio_eps_db must be finite and < 0"),
    (dict(temporal="clip"), "temporal must be one of"),
    (dict(eps_visual=-1.0), "must be finite and >= 0"),
])
def test_a_threat_model_is_validated_on_construction(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThreatModel(**{"eps_visual": 1.0, **fields})


def test_a_threat_model_names_itself_for_tables_and_records() -> None:
    assert ThreatModel(0.0, 0.012).key == "A@v0,a0.012" and ThreatModel(0.0, 0.012).label == "A (εa=0.012)"
    joint = ThreatModel(1.0, 0.5, norm="l2", units="pixel", joint_eps=1.0)
    assert joint.key == "A+V@l2:v1,a0.5,j1" and joint.label == "A+V (εv=1, εa=0.5) [L2, joint ball J=1]"
    assert ThreatModel(0.0, 0.0, audio_eps_db=-30).key == "A@v0,a-30dB"
    assert ThreatModel(0.0, 0.012).shifted(0.5).key == "A@v0,a0.012,shift0.5s"
    assert Budget(0.0, 0.012, grid=True).core() == ThreatModel(0.0, 0.012)


def test_a_loudness_relative_budget_follows_each_clip() -> None:
    audio = torch.stack([torch.full((1, 8), 0.5), torch.full((1, 8), 0.05)])
    radius = ThreatModel(audio_eps_db=-20.0).radius("audio", audio)
    torch.testing.assert_close(radius.flatten(), torch.tensor([0.05, 0.005]))
