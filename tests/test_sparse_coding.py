"""Tests of the lasso solvers (defenses.sparse_coding) and the memory-bank defense (defenses.memory_bank).

Per-sample convergence, implicit gradients and the purification modes: tests/test_implicit_lasso.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from defenses.memory_bank import (
    BankError,
    DefendedModel,
    MemoryBank,
    build_bank,
    collect_features,
    load_bank,
    save_bank,
)
from defenses.sparse_coding import fista, ista_released, lasso_objective, lipschitz_constant, soft_threshold
from models import ModelOutput, build_model
from utils.fileio import CheckpointError

LAM = 0.1
B, C, IMG, WAVE = 3, 5, 64, 4096
FRAME_DIM, SOUND_DIM = 32, 64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The solvers run thousands of tiny products: extra threads only contend (badly on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def problem(d: int = 20, n: int = 40, b: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A small float64 lasso problem whose solutions have both zero and non-zero entries."""
    D = torch.randn(d, n, dtype=torch.float64)
    F = torch.randn(b, d, dtype=torch.float64) * 0.3
    return D, F


def coordinate_descent(D: torch.Tensor, F: torch.Tensor, lam: float, sweeps: int = 1000) -> torch.Tensor:
    """Reference lasso solver: cyclic coordinate descent, all samples at once."""
    A = torch.zeros(F.shape[0], D.shape[1], dtype=D.dtype)
    R = F.clone()  # residuals f - Dα
    col_sq = D.pow(2).sum(dim=0)
    for _ in range(sweeps):
        for i in range(D.shape[1]):
            rho = R @ D[:, i] + A[:, i] * col_sq[i]
            new = soft_threshold(rho, lam) / col_sq[i]
            R += torch.outer(A[:, i] - new, D[:, i])
            A[:, i] = new
    return A


def small_model(head: str = "concat"):
    return build_model("smallcnn", "anet", head, cls_num=C, frame_dim=FRAME_DIM, sound_dim=SOUND_DIM).eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(B, 3, 1, IMG, IMG), torch.rand(B, 1, WAVE) * 2 - 1


# --- solvers -------------------------------------------------------------------------------------------------


def test_soft_threshold_values() -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.5])
    assert torch.equal(soft_threshold(x, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5]))
    assert torch.equal(soft_threshold(x, 0.0), x)
    assert torch.equal(soft_threshold(x, torch.tensor(0.5)), torch.tensor([-2.5, -0.5, 0.0, 0.0, 0.0, 0.5, 2.0]))


@pytest.mark.parametrize("shape", [(20, 40), (40, 20)])
def test_power_iteration_matches_eigvalsh(shape: tuple[int, int]) -> None:
    D = torch.randn(*shape, dtype=torch.float64)
    top = torch.linalg.eigvalsh(D.T @ D)[-1].item()
    assert lipschitz_constant(D) == pytest.approx(top, rel=1e-5)  # a small eigen-gap: 100 steps fall short
    nonneg = torch.randn(64, 128).abs()  # ReLU-like features: one dominant eigenvalue
    assert lipschitz_constant(nonneg) == pytest.approx(torch.linalg.eigvalsh(nonneg.T @ nonneg)[-1].item(), rel=1e-5)
    assert lipschitz_constant(D) == lipschitz_constant(D.clone())  # deterministic start vector


def test_fista_satisfies_the_lasso_optimality_conditions() -> None:
    D, F = problem()
    A = fista(D, F, LAM, max_iter=20000, tol=0.0)
    corr = (F - A @ D.T) @ D  # Dᵀ(f − Dα) per sample
    active = A != 0
    assert active.any() and (~active).any(), "the test problem should have zero and non-zero code entries"
    assert torch.allclose(corr[active], LAM * A[active].sign(), atol=1e-9)
    assert corr[~active].abs().max() <= LAM + 1e-9
    early = fista(D, F, LAM, max_iter=20, tol=0.0)  # the check can fail: 20 iterations are not optimal
    corr = (F - early @ D.T) @ D
    assert not torch.allclose(corr[early != 0], LAM * early[early != 0].sign(), atol=1e-9)


def test_fista_objective_matches_coordinate_descent() -> None:
    D, F = problem()
    ref = lasso_objective(D, F, coordinate_descent(D, F, LAM), LAM)
    got = lasso_objective(D, F, fista(D, F, LAM, max_iter=20000, tol=1e-12), LAM)
    assert torch.allclose(got, ref, rtol=1e-9, atol=0.0)
    A0 = torch.zeros(F.shape[0], D.shape[1], dtype=D.dtype)
    assert torch.allclose(lasso_objective(D, F, A0, LAM), 0.5 * F.pow(2).sum(dim=1))


def test_fista_momentum_beats_plain_ista_on_relu_like_features() -> None:
    D = torch.randn(32, 64, dtype=torch.float64).abs()  # non-negative columns: an ill-conditioned problem
    F = torch.randn(5, 32, dtype=torch.float64).abs()
    L = lipschitz_constant(D)
    optimum = lasso_objective(D, F, fista(D, F, LAM, L, max_iter=20000, tol=0.0), LAM)
    fast = lasso_objective(D, F, fista(D, F, LAM, L, max_iter=200, tol=0.0), LAM)
    plain = lasso_objective(D, F, ista_released(D, F, LAM, step=1 / (1.0001 * L), tol=0.0, max_iter=200), LAM)
    assert ((fast - optimum) / optimum).max() < 0.2 * ((plain - optimum) / optimum).min()


def test_batched_fista_equals_per_sample_fista() -> None:
    D, F = problem(b=6)
    batched = fista(D, F, LAM, max_iter=300, tol=0.0)
    single = torch.cat([fista(D, f[None], LAM, max_iter=300, tol=0.0) for f in F])
    assert torch.allclose(batched, single, atol=1e-12)
    with_gram = fista(D, F, LAM, max_iter=300, tol=0.0, gram=D.T @ D)
    assert torch.allclose(batched, with_gram, atol=1e-10)


def test_fista_stopping_rule_is_relative() -> None:
    D, F = problem()
    L = lipschitz_constant(D)
    first_step = soft_threshold(F @ D / L, LAM / L)
    # the first step changes every code by 100 % of its norm: it stops there only when tol exceeds 1
    assert torch.allclose(fista(D, F, LAM, L, tol=1.01), first_step)
    assert not torch.allclose(fista(D, F, LAM, L, tol=0.99), first_step)
    # the rule is scale-free: scaling the features scales the code and keeps the iteration count
    assert torch.allclose(fista(D, 100 * F, 100 * LAM, L, tol=1e-3), 100 * fista(D, F, LAM, L, tol=1e-3))
    # λ ≥ ‖Dᵀf‖∞ makes zero the solution, found at once
    assert torch.equal(fista(D, F, float((F @ D).abs().max()) + 1, L), torch.zeros(5, 40, dtype=D.dtype))


def test_ista_released_step_check_stopping_and_convergence() -> None:
    D, F = problem()
    top = torch.linalg.eigvalsh(D.T @ D)[-1].item()
    with pytest.raises(ValueError, match="too large"):
        ista_released(D, F, LAM, step=1.5 / top)
    step = 0.9 / top
    # a tolerance above the first change stops after one step, as the released loop did
    assert torch.allclose(ista_released(D, F, LAM, step, tol=1e9), soft_threshold(step * (F @ D), step * LAM))
    long_run = ista_released(D, F, LAM, step, tol=0.0, max_iter=20000)
    ref = lasso_objective(D, F, fista(D, F, LAM, max_iter=20000, tol=1e-12), LAM)
    assert torch.allclose(lasso_objective(D, F, long_run, LAM), ref, rtol=1e-8)


def test_differentiable_fista_gradient_matches_finite_differences() -> None:
    D, F = problem(d=6, n=10, b=2)
    w = torch.randn(2, 6, dtype=torch.float64)

    def purified(f: torch.Tensor) -> torch.Tensor:
        return (fista(D, f, LAM, max_iter=200, tol=0.0, differentiable=True) @ D.T * w).sum()

    f = F.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(purified(f), f)
    eps = 1e-6
    numeric = torch.zeros_like(F)
    for idx in range(F.numel()):
        e = torch.zeros(F.numel(), dtype=F.dtype)
        e[idx] = eps
        e = e.view_as(F)
        numeric.view(-1)[idx] = (purified(F + e) - purified(F - e)).item() / (2 * eps)
    assert grad.abs().max() > 1e-3
    assert torch.allclose(grad, numeric, atol=1e-5, rtol=1e-4)
    assert not fista(D, f, LAM, max_iter=5).requires_grad  # differentiable=False: no graph


# --- memory banks ----------------------------------------------------------------------------------------------


def test_bank_mix_one_returns_the_reconstruction_and_mix_zero_the_input() -> None:
    D = torch.randn(16, 64).abs()
    f = torch.randn(4, 16).abs()
    full = MemoryBank(D, mix=1.0)
    recon = full.code(f) @ D.T
    assert torch.allclose(full(f), recon)
    assert torch.allclose(MemoryBank(D, mix=0.5)(f), 0.5 * recon + 0.5 * f)
    assert torch.equal(MemoryBank(D, mix=0.0)(f), f)
    released = MemoryBank(D, mix=1.0, solver="ista", step=0.5 / full.L)
    assert released(f).shape == f.shape
    with pytest.raises(ValueError, match="step"):
        MemoryBank(D, solver="ista")
    with pytest.raises(ValueError, match="too large for this bank"):
        MemoryBank(D, solver="ista", step=2 / full.L)


def test_build_bank_is_deterministic_per_seed() -> None:
    feats = torch.randn(300, 8)
    for method in ("random", "kmeans"):
        a = build_bank(feats, size=32, method=method, seed=1)
        assert a.shape == (8, 32)
        assert torch.equal(a, build_bank(feats, size=32, method=method, seed=1))
        assert not torch.equal(a, build_bank(feats, size=32, method=method, seed=2))
    random_bank = build_bank(feats, size=32, method="random", seed=1)
    assert all((feats == col).all(dim=1).any() for col in random_bank.T)  # columns are training features
    assert len({tuple(col.tolist()) for col in random_bank.T}) == 32  # drawn without replacement
    with pytest.raises(ValueError, match="method"):
        build_bank(feats, size=4, method="pca")


def test_kmeans_centres_are_the_means_of_their_clusters() -> None:
    blobs = torch.eye(6) * 20
    feats = (blobs.repeat_interleave(40, dim=0) + torch.randn(240, 6))[torch.randperm(240)]
    centres = build_bank(feats, size=6, method="kmeans", seed=0).T
    nearest = torch.cdist(feats, centres).argmin(dim=1)
    assert nearest.unique().numel() == 6
    for k in range(6):
        assert torch.allclose(centres[k], feats[nearest == k].mean(dim=0), atol=1e-5)
    assert torch.cdist(centres, blobs).min(dim=1).values.max() < 1.0  # one centre per blob


def test_small_feature_sets_use_every_feature_with_a_warning() -> None:
    feats = torch.randn(10, 8)
    with pytest.warns(UserWarning, match="only 10 features"):
        bank = build_bank(feats, size=32, method="kmeans")
    assert torch.equal(bank, feats.T)


def test_bank_save_load_round_trip(tmp_path) -> None:
    D = torch.randn(16, 32)
    path = tmp_path / "banks" / "Dv.pth"
    save_bank(path, D, {"method": "kmeans", "seed": 3, "source": "run-1"})
    assert torch.equal(load_bank(path, expected_dim=16), D)
    raw = torch.load(path, weights_only=True)
    assert raw["meta"] == {"method": "kmeans", "seed": 3, "source": "run-1", "feature_dim": 16, "size": 32}
    assert [p.name for p in path.parent.iterdir()] == ["Dv.pth"]  # no temporary file left
    torch.save(D, tmp_path / "released.pth")  # the released format: a bare [512, N] tensor
    assert torch.equal(load_bank(tmp_path / "released.pth", 16), D)


def test_a_bank_of_another_feature_size_fails_clearly(tmp_path) -> None:
    path = tmp_path / "Da.pth"
    save_bank(path, torch.randn(16, 32))
    with pytest.raises(BankError) as err:
        load_bank(path, expected_dim=512)
    message = str(err.value)
    assert str(path) in message and "16-d" in message and "512-d" in message
    assert isinstance(err.value, ValueError) and isinstance(err.value, CheckpointError)
    with pytest.raises(BankError, match="not found"):
        load_bank(tmp_path / "missing.pth", 16)
    model = small_model()
    with pytest.raises(BankError, match=f"16-d features but the model's audio features are {SOUND_DIM}-d"):
        DefendedModel(model, bank_a=MemoryBank(torch.randn(16, 32)))


# --- defended model ---------------------------------------------------------------------------------------------


def banks(mix: float) -> tuple[MemoryBank, MemoryBank]:
    return (MemoryBank(torch.rand(FRAME_DIM, 48), mix=mix, max_iter=50),
            MemoryBank(torch.rand(SOUND_DIM, 48), mix=mix, max_iter=50))


def test_defended_model_with_mix_zero_equals_the_plain_model() -> None:
    model = small_model()
    frames, audio = inputs()
    defended = DefendedModel(model, *banks(0.0)).eval()
    with torch.no_grad():
        assert torch.equal(defended(frames, audio).logits, model(frames, audio).logits)


def test_defended_model_outputs_and_attributes() -> None:
    model = small_model()
    bank_v, bank_a = banks(0.5)
    defended = DefendedModel(model, bank_v, bank_a).eval()
    assert defended.net_frame is model.net_frame and defended.net_sound is model.net_sound
    assert defended.net_classifier is model.net_classifier
    frames, audio = inputs()
    out = defended(frames, audio)
    plain = model(frames, audio)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (B, C) and out.feat_v.shape == (B, FRAME_DIM) and out.feat_a.shape == (B, SOUND_DIM)
    assert torch.equal(out.fmap_v, plain.fmap_v)
    assert torch.allclose(out.feat_v, bank_v(plain.feat_v)) and torch.allclose(out.feat_a, bank_a(plain.feat_a))
    assert torch.allclose(out.logits, model.net_classifier(out.feat_v, out.feat_a, None))
    only_visual = DefendedModel(model, bank_v=bank_v).eval()
    assert torch.equal(only_visual(frames, audio).feat_a, plain.feat_a)  # no audio bank: not purified
    defended.purification = "bpda"
    assert bank_v.mode == bank_a.mode == defended.purification == "bpda"
    with pytest.raises(ValueError, match="no audio encoder"):
        DefendedModel(small_model("visual"), bank_a=bank_a)


@pytest.mark.filterwarnings("ignore::defenses.sparse_coding.DenseCodeWarning")  # 50 iterations: dense codes
def test_attack_gradients_reach_the_inputs_in_every_mode() -> None:
    defended = DefendedModel(small_model(), *banks(0.5)).eval()
    frames, audio = (x.requires_grad_(True) for x in inputs())
    for mode in ("implicit", "unrolled", "bpda"):
        defended.purification = mode
        assert defended.purification == mode
        loss = torch.nn.functional.cross_entropy(defended(frames, audio).logits, torch.arange(B))
        g_v, g_a = torch.autograd.grad(loss, (frames, audio))
        assert g_v.abs().sum() > 0 and g_a.abs().sum() > 0


def test_defended_encoders_return_purified_embeddings_and_forward_is_fuse_of_encode() -> None:
    model = small_model()
    bank_v, bank_a = banks(0.5)
    defended = DefendedModel(model, bank_v, bank_a).eval()
    assert "forward" not in DefendedModel.__dict__  # AVModel's fuse(*encode(...)): attacks see the same model
    frames, audio = inputs()
    with torch.no_grad():
        feat_v, fmap_v = defended.encode_visual(frames)
        feat_a = defended.encode_audio(audio)
        plain_v, plain_fmap = model.encode_visual(frames)
        assert torch.allclose(feat_v, bank_v(plain_v)) and torch.equal(fmap_v, plain_fmap)
        assert torch.allclose(feat_a, bank_a(model.encode_audio(audio)))
        assert torch.equal(defended.fuse(feat_v, feat_a, fmap_v).logits, defended(frames, audio).logits)
    # an attack on the frames with the audio encoded once, without a graph: only the visual coding is differentiated
    frames.requires_grad_(True)
    logits = defended.fuse(defended.encode_visual(frames)[0], feat_a, None).logits
    (g_v,) = torch.autograd.grad(logits.sum(), frames)
    assert g_v.abs().sum() > 0 and feat_a.grad_fn is None


def test_defended_model_flags_itself_as_a_dynamic_defense() -> None:
    model = small_model()
    assert DefendedModel(model, *banks(0.5)).runs_optimisation
    assert not DefendedModel(model, *banks(0.0)).runs_optimisation  # mix 0: the features pass unchanged
    assert not DefendedModel(model).runs_optimisation
    assert not hasattr(model, "runs_optimisation")
    assert "BPDA" in DefendedModel.adaptive_advice and "implicit" in DefendedModel.adaptive_advice


def test_collect_features_over_a_loader() -> None:
    model = small_model().train()
    loader = [dict(zip(("frames", "audio"), inputs()), label=torch.zeros(B, dtype=torch.long)) for _ in range(3)]
    feat_v, feat_a = collect_features(model, loader, "cpu")
    assert feat_v.shape == (3 * B, FRAME_DIM) and feat_a.shape == (3 * B, SOUND_DIM)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        assert torch.allclose(feat_v[:B], model(loader[0]["frames"], loader[0]["audio"]).feat_v)
    feat_v, feat_a = collect_features(small_model("visual"), loader, "cpu", max_batches=2)
    assert feat_v.shape == (2 * B, FRAME_DIM) and feat_a is None


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_bank_with_a_non_finite_value_is_refused_at_load_naming_the_file(tmp_path, bad: float) -> None:
    D = torch.randn(16, 32)
    D[3, 7] = bad  # one bad column entry would make every code (and every prediction) meaningless
    path = tmp_path / "Dv.pth"
    save_bank(path, D)
    with pytest.raises(BankError, match=rf"{path.name}: the memory bank holds 1 non-finite values"):
        load_bank(path, expected_dim=16)
