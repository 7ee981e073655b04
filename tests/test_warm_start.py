"""Warm-started sparse coding: ``fista(init=...)``, the per-sample code cache (``defenses.warm_start``) and its use by
the memory banks and the evaluation engine."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

import main_defense
from defenses.memory_bank import DefendedModel, MemoryBank, defend_with_banks, save_bank
from defenses.protocol import sample_scope, without_state
from defenses.sparse_coding import fista, fista_codes, implicit_lasso, lipschitz_constant
from defenses.warm_start import CodeCache
from evaluation.robustness.engine import AttackEngine, Variant
from evaluation.robustness.protocol import Budget
from evaluation.robustness.records import RecordKey
from models import FUSION_HEADS, AVModel, build_model
from utils.distributed import DistInfo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def unique_problem(b: int = 6, d: int = 20, n: int = 40) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A float64 problem in general position with sparse solutions (|S| well below d): a unique lasso solution."""
    return torch.randn(d, n, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64) * 0.3, 0.3


# --- the solver -----------------------------------------------------------------------------------------------


def test_a_warm_start_at_the_optimum_stops_at_once_with_the_cold_code() -> None:
    D, F, lam = unique_problem()
    L = lipschitz_constant(D)
    optimum = fista(D, F, lam, L, max_iter=20000, tol=0.0)
    cold = fista_codes(D, F, lam, L, max_iter=20000, tol=1e-8)
    warm = fista_codes(D, F, lam, L, max_iter=20000, tol=1e-8, init=optimum)
    assert (warm.iterations <= 2).all() and (cold.iterations > 50).all()
    assert torch.allclose(warm.codes, optimum, atol=1e-12, rtol=0)
    assert torch.allclose(warm.codes, cold.codes, atol=1e-6, rtol=0)


def test_a_warm_start_near_the_optimum_is_checked_not_frozen() -> None:
    """A start that changed little from the optimum but is not a solution must iterate until it is one: the
    first step's change is the proximal-gradient residual at the start, not a change between two iterates."""
    D, F, lam = unique_problem()
    L = lipschitz_constant(D)
    optimum = fista(D, F, lam, L, max_iter=20000, tol=0.0)
    nudged = optimum + 1e-3 * optimum.abs().amax(dim=1, keepdim=True) * torch.randn_like(optimum)
    warm = fista_codes(D, F, lam, L, max_iter=20000, tol=1e-8, init=nudged)
    assert (warm.iterations > 2).all()
    assert torch.allclose(warm.codes, optimum, atol=1e-6, rtol=0)


def test_a_warm_start_from_far_away_reaches_the_same_solution() -> None:
    D, F, lam = unique_problem()
    L = lipschitz_constant(D)
    cold = fista(D, F, lam, L, max_iter=20000, tol=1e-12)
    for far in (10 * torch.randn(F.shape[0], D.shape[1], dtype=D.dtype), cold.flip(0)):  # another sample's code too
        warm = fista(D, F, lam, L, max_iter=20000, tol=1e-12, init=far)
        assert torch.allclose(warm, cold, atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="one code per feature"):
        fista(D, F, lam, L, init=cold[:2])


def test_implicit_gradients_are_unchanged_by_a_warm_start() -> None:
    D, F, lam = unique_problem()
    L = lipschitz_constant(D)
    w = torch.randn_like(F)
    cold = fista(D, F, lam, L, max_iter=20000, tol=1e-12)
    grads = []
    for init in (None, cold + 0.01 * torch.randn_like(cold)):
        f = F.clone().requires_grad_(True)
        codes = implicit_lasso(D, f, lambda x, init=init: fista(D, x, lam, L, max_iter=20000, tol=1e-12, init=init))
        grads.append(torch.autograd.grad((codes @ D.T * w).sum(), f)[0])
    assert grads[0].abs().max() > 1e-2 and torch.allclose(grads[0], grads[1], atol=1e-8, rtol=0)


# --- the cache ------------------------------------------------------------------------------------------------


def one_step_bank() -> MemoryBank:
    """A bank whose coding is one FISTA iteration: its code depends strongly on where it starts (so a code
    seeded from the wrong sample shows)."""
    return MemoryBank(torch.randn(20, 40), lam=0.3, mix=0.5, tol=1e-3, max_iter=1)


def attacked_codes(bank: MemoryBank, F: torch.Tensor, moved: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The codes of ``moved`` inside an attack-like scope started by a clean pass on ``F`` (rows = ``ids``)."""
    with bank.cache.scope(ids):
        bank.code(F)
        with bank.cache.scope(ids):
            bank.code(moved)
            return bank.code(moved + 0.01)


def test_the_cache_seeds_each_sample_with_its_own_code_in_any_order_or_batch() -> None:
    bank = one_step_bank()
    F = torch.randn(6, 20) * 0.3
    moved = F + 0.05 * torch.randn_like(F)
    ids = [10, 11, 12, 13, 14, 15]
    reference = attacked_codes(bank, F, moved, ids)
    # by hand: each sample's three one-step codings, each from its own previous code
    by_hand = torch.stack([
        fista(bank.D, (moved[i] + 0.01)[None], bank.lam, bank.L, 1, init=fista(
            bank.D, moved[i][None], bank.lam, bank.L, 1, init=fista(bank.D, F[i][None], bank.lam, bank.L, 1)))[0]
        for i in range(6)])
    assert torch.allclose(reference, by_hand, atol=1e-6)
    cold = fista(bank.D, moved + 0.01, bank.lam, bank.L, 1)
    assert not torch.allclose(reference, cold, atol=1e-3)  # the warm start does change a one-step code
    for order in ([5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 4, 3]):
        shuffled = attacked_codes(bank, F[order], moved[order], [ids[i] for i in order])
        assert torch.allclose(shuffled, reference[order], atol=1e-6)
    halves = [attacked_codes(bank, F[part], moved[part], [ids[i] for i in part]) for part in ([0, 1, 2], [3, 4, 5])]
    assert torch.allclose(torch.cat(halves), reference, atol=1e-6)
    # an attack on some of the batch's samples, in another order (as a cascade runs on the samples left standing)
    some = [3, 0, 5]
    with bank.cache.scope(ids):
        bank.code(F)
        with bank.cache.scope([ids[i] for i in some]):
            bank.code(moved[some])
            assert torch.allclose(bank.code(moved[some] + 0.01), reference[some], atol=1e-6)


def test_passes_that_are_not_identified_are_coded_from_zero() -> None:
    bank = one_step_bank()
    F = torch.randn(4, 20) * 0.3
    moved = F + 0.05 * torch.randn_like(F)
    cold = fista(bank.D, moved, bank.lam, bank.L, 1)
    with bank.cache.scope([0, 1, 2, 3]):
        bank.code(F)
        assert torch.allclose(bank.code(moved[:3]), cold[:3])  # a subset: rows not identified
        with without_state(DefendedModel(build_model("smallcnn", "anet", "concat", cls_num=3, frame_dim=20,
                                                     sound_dim=8), bank_v=bank)):
            assert torch.allclose(bank.code(moved), cold)  # no state inside
        with bank.cache.scope([0, 1, 1, 3]):  # a repeated id: its rows are not identified
            codes = bank.code(moved)
        assert torch.allclose(codes[1:3], cold[1:3]) and not torch.allclose(codes[0], cold[0], atol=1e-3)
    assert torch.allclose(bank.code(moved), cold)  # outside every scope nothing is kept
    bank.warm_start = False
    with bank.cache.scope([0, 1, 2, 3]):
        bank.code(F)
        assert torch.allclose(bank.code(moved), cold)


def test_a_repeated_feature_gets_its_code_back_without_iterating() -> None:
    bank = MemoryBank(torch.randn(20, 40), lam=0.3, tol=1e-4, max_iter=5000)
    F = torch.randn(4, 20) * 0.3
    with bank.cache.scope([7, 8, 9, 10]):
        first = bank.code(F)
        iterations = bank.stats.iterations
        assert torch.equal(bank.code(F.clone()), first) and bank.stats.iterations == iterations
    assert bank.stats.reused_rows == 4 and bank.stats.rows == 8


# --- the defended model and the engine ---------------------------------------------------------------------------


class LinearEncoder(torch.nn.Module):
    """A linear encoder of the flattened input: Gaussian-like features, so the banks' lasso is well posed."""

    def __init__(self, size: int, dim: int, visual: bool) -> None:
        super().__init__()
        self.proj, self.out_dim, self.visual = torch.nn.Linear(size, dim), dim, visual

    def forward(self, x: torch.Tensor):
        feat = self.proj(x.flatten(1))
        return (feat, None) if self.visual else feat


def small_defended(warm: bool, tol: float = 1e-3, max_iter: int = 20000) -> tuple[DefendedModel, list[dict]]:
    """Linear encoders + the concat head with banks of random directions (a unique, sparse lasso solution), and
    a batch labelled with the defended model's clean predictions."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    head = FUSION_HEADS.get("concat")(dim_v=20, dim_a=20, num_classes=4)
    model = AVModel(LinearEncoder(48, 20, True), LinearEncoder(64, 20, False), head).eval()
    banks = [MemoryBank(torch.randn(20, 40, generator=gen) * 0.2, lam=0.05, mix=0.8, tol=tol, max_iter=max_iter,
                        warm_start=warm) for _ in range(2)]
    defended = DefendedModel(model, *banks).eval()
    frames, audio = torch.rand(8, 3, 1, 4, 4, generator=gen), torch.rand(8, 1, 64, generator=gen) * 2 - 1
    with torch.no_grad():
        labels = defended(frames, audio).logits.argmax(dim=1)
    return defended, [{"frames": frames, "audio": audio, "label": labels, "index": torch.arange(8),
                       "info": [f"c/{i}" for i in range(8)]}]


def engine_args() -> SimpleNamespace:
    return SimpleNamespace(attack_type=["pgd"], attack_steps=5, attack_alpha=None, attack_loss="ce",
                           random_start=False, restarts=1, eot_iter=1, seed=0, eps_units="normalized", norm="linf",
                           joint_eps=None, audio_eps_db=None, temporal=["frame"], max_shift=None, shift_steps=9,
                           apgd_steps=100, apgd_targets=9, square_queries=5000, square_p_init=0.8)


def split(batches: list[dict], size: int) -> list[dict]:
    return [{k: v[i:i + size] for k, v in batches[0].items()} for i in range(0, len(batches[0]["index"]), size)]


@pytest.mark.filterwarnings("ignore::defenses.sparse_coding.DenseCodeWarning")
def test_an_attack_through_the_banks_has_the_same_outcomes_warm_or_cold_at_any_batch_size() -> None:
    budget = Budget(0.05, 0.05)
    key = RecordKey("pgd", budget.key, "ce")
    outcomes, stats = {}, {}
    for warm, size in ((False, 8), (True, 8), (True, 3)):
        defended, batches = small_defended(warm)
        engine = AttackEngine(defended, engine_args(), DistInfo(), [budget], ["pgd"], [Variant("ce", "ce", "implicit")])
        run = engine.run(split(batches, size))
        outcomes[warm, size] = run.records.column(key)
        banks = (defended.bank_v, defended.bank_a)
        stats[warm, size] = (sum(b.stats.warm_rows for b in banks), sum(b.stats.warm_iterations for b in banks),
                             sum(b.stats.iterations for b in banks) / sum(b.stats.rows for b in banks))
    assert 0 < (outcomes[False, 8] == 1).sum() < 8  # some samples survive, some are fooled
    assert (outcomes[True, 8] == outcomes[False, 8]).all() and (outcomes[True, 3] == outcomes[True, 8]).all()
    warm_rows, warm_iterations, cold_mean = stats[True, 8][0], stats[True, 8][1], stats[False, 8][2]
    assert stats[False, 8][0] == 0 and warm_rows > 0
    assert warm_iterations / warm_rows < cold_mean / 3  # the warm path ran, and cheaply


@pytest.mark.filterwarnings("ignore::defenses.sparse_coding.DenseCodeWarning")
def test_the_verdict_on_an_adversarial_input_codes_from_zero() -> None:
    """With one-iteration banks a warm-started code differs from a cold one: the recorded loss must be the cold
    model's on the adversarial input, not that of a coding seeded by the attack's last step."""
    budget = Budget(0.05, 0.05)
    defended, batches = small_defended(True, max_iter=1)
    engine = AttackEngine(defended, engine_args(), DistInfo(), [budget], ["pgd"], [Variant("ce", "ce", "implicit")],
                          num_vis=8)
    run = engine.run(batches)
    recorded = torch.from_numpy(run.records.column(RecordKey("pgd", budget.key, "ce"), "loss"))
    adv = [next(iter(sample["adv"].values())) for sample in run.vis]
    frames, audio = torch.stack([a["frames"] for a in adv]), torch.stack([a["audio"] for a in adv])
    labels = batches[0]["label"]
    with torch.no_grad():
        cold = torch.nn.functional.cross_entropy(defended(frames, audio).logits, labels, reduction="none")
        with defended.sample_scope(batches[0]["index"]):  # seeded by the clean codes: not what was recorded
            defended(batches[0]["frames"], batches[0]["audio"])
            seeded = torch.nn.functional.cross_entropy(defended(frames, audio).logits, labels, reduction="none")
    assert torch.allclose(recorded.float(), cold, atol=1e-5)
    assert not torch.allclose(seeded, cold, atol=1e-3)


def test_the_flag_turns_the_warm_start_off(tmp_path) -> None:
    model = build_model("smallcnn", "anet", "concat", cls_num=4, frame_dim=16, sound_dim=16)
    paths = {"visual": tmp_path / "v.pth", "audio": tmp_path / "a.pth"}
    for path in paths.values():
        save_bank(path, torch.rand(16, 8))
    common = dict(lam=0.1, mix=0.5, solver="fista", steps={"visual": None, "audio": None}, tol=1e-3, max_iter=10)
    assert all(b.warm_start for b in defend_with_banks(model, paths, **common)._banks())
    assert not any(b.warm_start for b in defend_with_banks(model, paths, warm_start=False, **common)._banks())
    argv = ["--mode", "eval", "--use_banks", "--dataset", "MUSIC"]
    assert main_defense.parse_args(argv).bank_warm_start == "on"
    assert main_defense.parse_args([*argv, "--bank_warm_start", "off"]).bank_warm_start == "off"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with sample_scope(torch.nn.Identity(), [0, 1]):  # any other model: nothing to do
            pass


def test_rows_name_a_subset_of_the_scope_and_share_its_codes() -> None:
    """A pass on a subset of the scope's samples (an attack's standing samples) reads and writes the scope's codes
    under the subset's ids; outside every scope ``rows`` keeps nothing."""
    cache = CodeCache()
    F = torch.randn(4, 3)
    with cache.rows([2, 0]):
        assert cache.seeds(F[:2], 5) is None
    with cache.scope([10, 11, 12, 13]):
        seeds = cache.seeds(F, 5)
        cache.store(seeds, F, torch.arange(20.0).view(4, 5))
        with cache.rows([13, 11]):
            sub = cache.seeds(F[[3, 1]], 5)
            assert torch.equal(sub.init, torch.arange(20.0).view(4, 5)[[3, 1]]) and bool(sub.repeated.all())
            cache.store(sub, F[[3, 1]] + 1, torch.full((2, 5), -1.0))
        after = cache.seeds(F, 5)
        assert torch.equal(after.init[[1, 3]], torch.full((2, 5), -1.0))  # the subset's codes stayed in the scope
        assert torch.equal(after.init[[0, 2]], torch.arange(20.0).view(4, 5)[[0, 2]])
