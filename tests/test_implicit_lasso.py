"""Tests of per-sample FISTA convergence, the implicit lasso gradient and the memory bank's purification modes."""
from __future__ import annotations

import warnings

import pytest
import torch

from defenses.memory_bank import MemoryBank
from defenses.sparse_coding import (
    DenseCodeWarning,
    fista,
    implicit_lasso,
    ista_released,
    lasso_solution_vjp,
    lipschitz_constant,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def mixed_batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A bank and features whose codes converge after very different iteration counts."""
    D = torch.randn(20, 40, dtype=dtype)
    F = torch.randn(6, 20, dtype=dtype) * 0.3
    F[1] = D[:, 3] * 2  # one bank column: a 1-sparse code, found quickly
    F[4] *= 20  # large features: many active entries, slow
    return D, F


def weighted_reconstruction(codes: torch.Tensor, D: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (codes @ D.T * w).sum()


# --- per-sample convergence ----------------------------------------------------------------------------------


def test_a_code_is_the_same_alone_and_in_any_batch() -> None:
    D, F = mixed_batch(torch.float64)
    L = lipschitz_constant(D)
    alone = torch.cat([fista(D, f[None], 0.1, L, max_iter=3000, tol=1e-4) for f in F])
    for order in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [1, 4], [2, 0, 1], [4, 3, 4]):
        batched = fista(D, F[order], 0.1, L, max_iter=3000, tol=1e-4)
        assert torch.allclose(batched, alone[order], atol=1e-6, rtol=0), order
    # the samples do stop at different iterations: running everybody as long as the slowest changes the codes
    slowest = fista(D, F, 0.1, L, max_iter=3000, tol=0.0)
    assert not torch.allclose(slowest, alone, atol=1e-6, rtol=0)


def lasso_objective(D: torch.Tensor, F: torch.Tensor, codes: torch.Tensor, lam: float) -> torch.Tensor:
    """Per row: 0.5 ||f - D a||^2 + lam ||a||_1, in float64."""
    D, F, codes = D.double(), F.double(), codes.double()
    return 0.5 * (F - codes @ D.T).pow(2).sum(dim=1) + lam * codes.abs().sum(dim=1)


def test_float32_codes_alone_and_in_a_batch_both_solve_the_lasso() -> None:
    """float32 batched and single-row products round differently, so the two codes may stop at different
    points; what the maths guarantees is that both are near-optimal: their lasso objective is within the
    stopping tolerance's reach of the float64 optimum, and the codes of a well-separated sample agree."""
    D, F = mixed_batch(torch.float32)
    L = lipschitz_constant(D)
    alone = torch.cat([fista(D, f[None], 0.1, L, max_iter=3000, tol=1e-4) for f in F])
    batched = fista(D, F.flip(0), 0.1, L, max_iter=3000, tol=1e-4).flip(0)
    optimum = lasso_objective(D, F, fista(D.double(), F.double(), 0.1, max_iter=20000, tol=1e-12), 0.1)
    for codes in (alone, batched):
        gap = lasso_objective(D, F, codes, 0.1) - optimum
        assert (gap >= -1e-6 * optimum).all()
        assert (gap <= 1e-3 * optimum).all(), gap / optimum
    assert torch.allclose(alone[1], batched[1], atol=1e-4, rtol=1e-3)  # the 1-sparse code is found by both


def test_ista_released_keeps_the_batch_wide_stop() -> None:
    D, F = mixed_batch(torch.float64)
    step = 0.9 / lipschitz_constant(D)
    alone = ista_released(D, F[1:2], 0.1, step, tol=1e-4, max_iter=3000)
    in_batch = ista_released(D, F, 0.1, step, tol=1e-4, max_iter=3000)[1:2]
    assert not torch.allclose(alone, in_batch, atol=1e-6, rtol=0)  # the batch's slowest sample sets the stop


# --- implicit gradients ----------------------------------------------------------------------------------------


def unique_solution_problem(b: int, d: int = 20, n: int = 40) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A float64 problem in general position whose solutions have |S| well below d (a unique lasso solution)."""
    return torch.randn(d, n, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64) * 0.3, 0.3


def test_implicit_gradient_matches_central_finite_differences() -> None:
    D, F, lam = unique_solution_problem(b=2, d=10, n=20)
    w = torch.randn_like(F)

    def solve(f: torch.Tensor) -> torch.Tensor:
        return fista(D, f, lam, max_iter=5000, tol=1e-13)

    A = solve(F)
    active = A != 0
    corr = (F - A @ D.T) @ D
    assert (active.sum(1) < D.shape[0]).all() and (~active).any(dim=1).all()
    # no entry near a kink of the piecewise-affine solution map: ±eps stays on one active set
    assert A[active].abs().min() > 1e-3 and corr[~active].abs().max() < lam - 1e-3
    f = F.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DenseCodeWarning)  # a unique solution: the exact gradient, no warning
        (grad,) = torch.autograd.grad(weighted_reconstruction(implicit_lasso(D, f, solve), D, w), f)
    eps = 1e-5
    numeric = torch.zeros_like(F)
    for idx in range(F.numel()):
        e = torch.zeros(F.numel(), dtype=F.dtype)
        e[idx] = eps
        e = e.view_as(F)
        numeric.view(-1)[idx] = (weighted_reconstruction(solve(F + e), D, w)
                                 - weighted_reconstruction(solve(F - e), D, w)).item() / (2 * eps)
    assert grad.abs().max() > 1e-2
    assert torch.allclose(grad, numeric, atol=1e-6, rtol=0)
    assert not torch.allclose(grad, w, atol=1e-2)  # not the identity (BPDA) gradient


def test_implicit_gradient_matches_unrolled_fista_at_convergence_without_an_unrolled_graph() -> None:
    D, F, lam = unique_solution_problem(b=5)
    w = torch.randn_like(F)
    f = F.clone().requires_grad_(True)
    codes = implicit_lasso(D, f, lambda x: fista(D, x, lam, max_iter=3000, tol=1e-12))
    # one node between the codes and the features, whatever the iteration count
    assert codes.grad_fn.next_functions[0][0].variable is f
    (implicit,) = torch.autograd.grad(weighted_reconstruction(codes, D, w), f)
    unrolled_codes = fista(D, f, lam, max_iter=3000, tol=0.0, differentiable=True)
    (unrolled,) = torch.autograd.grad(weighted_reconstruction(unrolled_codes, D, w), f)
    assert torch.allclose(codes, unrolled_codes, atol=1e-9)
    assert (torch.cosine_similarity(implicit, unrolled, dim=1) >= 0.99).all()
    early = fista(D, f, lam, max_iter=3, tol=0.0, differentiable=True)  # the comparison can fail
    (unconverged,) = torch.autograd.grad(weighted_reconstruction(early, D, w), f)
    assert (torch.cosine_similarity(implicit, unconverged, dim=1) < 0.99).any()
    with pytest.raises(ValueError, match="dictionary"):
        implicit_lasso(D.clone().requires_grad_(True), f, lambda x: fista(D, x, lam))


def pseudo_inverse_vjp(D: torch.Tensor, A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Reference: ``(D_Sᵀ)⁺ g_S`` per sample by SVD."""
    rows = []
    for a, g_b in zip(A, g):
        S = a != 0
        rows.append(torch.linalg.pinv(D[:, S].T.double()) @ g_b[S].double())
    return torch.stack(rows)


def test_dense_codes_fall_back_to_the_pseudo_inverse_gradient_with_a_warning() -> None:
    D = torch.randn(8, 32, dtype=torch.float64).abs()  # non-negative columns: early codes are dense
    F = torch.randn(3, 8, dtype=torch.float64).abs()
    f = F.clone().requires_grad_(True)
    codes = implicit_lasso(D, f, lambda x: fista(D, x, 0.01, max_iter=3, tol=0.0))
    assert ((codes != 0).sum(1) > D.shape[0]).all(), "stopped early, the codes should be denser than d"
    g = torch.randn_like(codes)
    with pytest.warns(DenseCodeWarning, match="pseudo-inverse"):
        (grad,) = torch.autograd.grad((codes * g).sum(), f)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    assert torch.allclose(grad, pseudo_inverse_vjp(D, codes.detach(), g), atol=1e-8)
    # through the reconstruction Dα a rank-d dense active set gives the identity
    codes = implicit_lasso(D, f, lambda x: fista(D, x, 0.01, max_iter=3, tol=0.0))
    with pytest.warns(DenseCodeWarning):
        (through_recon,) = torch.autograd.grad((codes @ D.T * F).sum(), f)
    assert torch.allclose(through_recon, F, atol=1e-8)


def test_a_singular_active_gram_matrix_uses_the_pseudo_inverse() -> None:
    D = torch.randn(10, 6, dtype=torch.float64)
    D[:, 1] = D[:, 0]  # two identical columns get identical FISTA updates: both active, D_SᵀD_S singular
    F = (2 * D[:, 0] + 0.05 * torch.randn(10, dtype=torch.float64))[None]
    A = fista(D, F, 0.1, max_iter=2000, tol=0.0)
    assert A[0, 0] != 0 and A[0, 1] != 0 and (A != 0).sum() <= D.shape[0]
    g = torch.randn_like(A)
    with pytest.warns(DenseCodeWarning):
        grad = lasso_solution_vjp(D, A, g)
    assert torch.isfinite(grad).all()
    assert torch.allclose(grad, pseudo_inverse_vjp(D, A, g), atol=1e-8)


# --- memory bank modes ---------------------------------------------------------------------------------------------


def converged_bank(mode: str) -> MemoryBank:
    return MemoryBank(torch.randn(20, 40), lam=0.5, mix=0.5, tol=1e-7, max_iter=5000, mode=mode)


def test_bank_purification_modes() -> None:
    bank = converged_bank("implicit")
    assert MemoryBank(torch.randn(4, 8)).mode == "implicit"  # the white-box default
    f = (torch.randn(5, 20) * 0.3).requires_grad_(True)
    w = torch.randn(5, 20)
    grads, outputs = {}, {}
    for mode in ("implicit", "unrolled", "bpda"):
        bank.mode = mode
        outputs[mode] = bank(f)
        (grads[mode],) = torch.autograd.grad((outputs[mode] * w).sum(), f)
    assert torch.allclose(outputs["implicit"], outputs["unrolled"], atol=1e-5)
    assert torch.allclose(outputs["implicit"], outputs["bpda"], atol=1e-5)
    assert (torch.cosine_similarity(grads["implicit"], grads["unrolled"], dim=1) >= 0.99).all()
    assert torch.equal(grads["bpda"], w)
    assert not torch.allclose(grads["implicit"], w, atol=1e-2)
    assert not torch.allclose(grads["implicit"], 0.5 * w, atol=1e-2)  # the coding is differentiated
    with torch.no_grad():
        assert bank(f).grad_fn is None
    for old_name in ("white_box", "gray_box"):
        with pytest.raises(ValueError, match="purification mode"):
            bank.mode = old_name


def test_bank_codes_in_float32_inside_a_bf16_autocast_region() -> None:
    bank = converged_bank("implicit")
    f32 = torch.randn(4, 20) * 0.3
    reference = bank(f32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f_bf16 = f32.to(torch.bfloat16)
        out_bf16 = bank(f_bf16)
        out_f32 = bank(f32)
        with torch.no_grad():
            codes_under_autocast = f32 @ bank.D  # what a product gives without the guard
    assert codes_under_autocast.dtype == torch.bfloat16  # autocast is active in this region
    assert out_f32.dtype == torch.float32 and torch.equal(out_f32, reference)
    assert out_bf16.dtype == torch.bfloat16
    assert torch.equal(out_bf16, bank(f_bf16.float()).to(torch.bfloat16))
    leaf = f_bf16.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (grad,) = torch.autograd.grad(bank(leaf).float().sum(), leaf)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()
