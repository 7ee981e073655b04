"""Batched lasso sparse coding of features over a dictionary (the memory-bank defense's solver).

Every solver finds, for each row ``f`` of ``F [B, d]``, a code ``α`` (a row of ``A [B, N]``) for

    min_α  ½‖Dα − f‖² + λ‖α‖₁,        D [d, N] (columns are bank features).

``fista`` is the solver to use: the whole batch at once, step ``1/L`` with ``L`` the largest eigenvalue of
DᵀD (estimated once per bank by power iteration), Nesterov momentum (Beck & Teboulle, 2009), and a per-sample
stopping rule, so a sample's code does not depend on the batch it is coded in. It may start from given codes (a
warm start: ``init``); ``fista_codes`` also returns each sample's iteration count.
``ista_released`` reproduces the released code's algorithm for fidelity and benchmarks: an eigen-decomposition
of DᵀD on every call, plain ISTA with the paper's fixed step, and the released batch-wide stopping rule.

Gradients through a solver: ``fista(..., differentiable=True)`` backpropagates through the unrolled
iterations (memory grows with the iteration count); ``implicit_lasso`` differentiates the lasso solution
itself through its optimality conditions (memory independent of the iteration count; exact at a solution).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def lasso_objective(D: Tensor, F: Tensor, A: Tensor, lam: float) -> Tensor:
    """``½‖Dα − f‖² + λ‖α‖₁`` per sample: ``D [d, N]``, ``F [B, d]``, ``A [B, N]`` -> ``[B]``."""
    residual = A @ D.T - F
    return 0.5 * residual.pow(2).sum(dim=1) + lam * A.abs().sum(dim=1)


def soft_threshold(x: Tensor, t: float | Tensor) -> Tensor:
    """Shrinkage ``sign(x)·max(|x| − t, 0)``, the proximal operator of ``t‖·‖₁``.

    Written as ``x − clamp(x, −t, t)``, whose autograd derivative is 1 outside ``[−t, t]`` and 0 inside.
    """
    return x - x.clamp(-t, t)


def lipschitz_constant(D: Tensor, iters: int = 100) -> float:
    """Largest eigenvalue of ``DᵀD`` (the Lipschitz constant of the lasso gradient) by power iteration.

    Iterates on the smaller of ``DᵀD`` and ``DDᵀ`` (same non-zero eigenvalues) from a fixed start vector, so
    the result is deterministic. The Rayleigh quotient never exceeds the true value and its error shrinks
    with the square of the eigenvector error; with a small eigen-gap ``iters`` may need raising.
    """
    D = D.detach()
    M = D.T @ D if D.shape[1] <= D.shape[0] else D @ D.T
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(M.shape[0], generator=gen, dtype=M.dtype).to(M.device) + 0.5
    v = v / v.norm()
    for _ in range(iters):
        w = M @ v
        norm = w.norm()
        if norm == 0:
            return 0.0
        v = w / norm
    return float(v @ (M @ v))


@dataclass
class LassoCodes:
    """What ``fista_codes`` returns: the ``codes [B, N]`` and the ``iterations [B]`` each sample ran."""

    codes: Tensor
    iterations: Tensor


def fista(D: Tensor, F: Tensor, lam: float = 0.1, L: float | None = None, max_iter: int = 2000,
          tol: float = 1e-3, differentiable: bool = False, gram: Tensor | None = None,
          init: Tensor | None = None) -> Tensor:
    """Lasso codes ``A [B, N]`` of ``F [B, d]`` over ``D [d, N]`` by batched FISTA (``fista_codes``)."""
    return fista_codes(D, F, lam, L, max_iter, tol, differentiable, gram, init).codes


def fista_codes(D: Tensor, F: Tensor, lam: float = 0.1, L: float | None = None, max_iter: int = 2000,
                tol: float = 1e-3, differentiable: bool = False, gram: Tensor | None = None,
                init: Tensor | None = None) -> LassoCodes:
    """Lasso codes of ``F [B, d]`` over ``D [d, N]`` by batched FISTA, and each sample's iteration count.

    ``L``: Lipschitz constant (``lipschitz_constant(D)`` when None); an underestimate can diverge.
    ``gram``: a precomputed ``DᵀD [N, N]``; then each iteration is one ``[B, N] × [N, N]`` product instead
    of two products with ``D``.
    ``init``: the start ``[B, N]`` (a warm start, e.g. the code of a nearby feature; detached), zero when None.
    FISTA starts there afresh (momentum factor ``t = 1``), so the first iteration is a plain proximal-gradient
    step from ``init``. The lasso solution does not depend on the start (unique for ``λ > 0`` in general
    position): a warm start changes the iteration count, and the code only within the tolerance.
    Stopping, per sample: a sample's code ``α_k = prox(y_{k−1} − ∇(y_{k−1})/L)`` is frozen once both its change
    ``‖α_k − α_{k−1}‖₂`` and its proximal-gradient residual ``‖α_k − y_{k−1}‖₂`` (``y`` the momentum point the
    step was taken from) are below ``tol·‖α_k‖₂`` (a code that stays zero counts as 0, zero is then its optimum);
    the others go on, up to ``max_iter`` iterations. The residual is zero exactly when ``y_{k−1}`` solves the
    lasso, so the rule does not fire where momentum merely turns (consecutive iterates close, the momentum point
    not), and a warm start's first step (``y_0 = α_0``) measures the residual at the start itself: a start
    passes only when it is itself a fixed point of the step to the tolerance, not for lying near the previous code.
    On an ill-conditioned bank a small relative residual does not bound the distance to the solution (for a cold
    start either), so warm- and cold-started codes can differ by more than ``tol``. Each sample's iterates depend
    only on that sample (FISTA's momentum factor depends only on the iteration count), so a code is the same alone
    and in any batch (up to the rounding of batched products). Relative, so the rule does not depend on the scale
    of the features (the released absolute rule fires after a few iterations on raw features, whose codes are
    small numbers).
    ``tol = 0`` runs every sample for ``max_iter`` iterations.
    ``differentiable``: keep the autograd graph through the unrolled iterations (``unrolled`` gradients: memory
    grows with the iteration count); otherwise run under ``no_grad``.
    """
    B, N = F.shape[0], D.shape[1]
    if init is not None and tuple(init.shape) != (B, N):
        raise ValueError(f"a warm start must be one code per feature, shape {(B, N)}; got {tuple(init.shape)}")
    if L is None:
        L = lipschitz_constant(D)
    if L <= 0:
        return LassoCodes(F.new_zeros(B, N), torch.zeros(B, dtype=torch.long))
    with torch.set_grad_enabled(differentiable):
        rows = torch.arange(B, device=F.device)  # the samples still iterating
        F_run, DtF = F, F @ D
        x = F.new_zeros(B, N) if init is None else init.detach().to(F.dtype).clone()
        y = x
        t = 1.0
        frozen_rows: list[Tensor] = []
        frozen_codes: list[Tensor] = []
        iterations = torch.full((B,), max_iter, dtype=torch.long)
        for k in range(1, max_iter + 1):
            grad = y @ gram - DtF if gram is not None else (y @ D.T - F_run) @ D
            x_new = soft_threshold(y - grad / L, lam / L)
            delta = x_new - x
            residual = (x_new - y).detach() if tol > 0 else None
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = x_new + ((t - 1) / t_next) * delta
            x, t = x_new, t_next
            if residual is None:
                continue
            change = torch.maximum(delta.detach().norm(dim=1), residual.norm(dim=1))
            converged = change < tol * x_new.detach().norm(dim=1).clamp_min(1e-30)
            if not bool(converged.any()):
                continue
            done = rows[converged]
            iterations[done.cpu()] = k
            frozen_rows.append(done)
            frozen_codes.append(x[converged])
            running = ~converged
            rows, x, y, F_run, DtF = rows[running], x[running], y[running], F_run[running], DtF[running]
            if rows.numel() == 0:
                break
        if not frozen_rows:
            return LassoCodes(x, iterations)
        order = torch.cat([*frozen_rows, rows]).argsort()
        return LassoCodes(torch.cat([*frozen_codes, x])[order], iterations)


class DenseCodeWarning(UserWarning):
    """An implicit lasso gradient taken at a code that is not a unique lasso solution (see ``lasso_solution_vjp``)."""


@dataclass
class CodingStats:
    """What a bank's coding met: ``dense_backward``, the backward passes whose implicit gradient fell back to the
    pseudo-inverse at codes that are not unique lasso solutions (the robustness checks read it); ``rows``, the
    features coded, ``iterations``, the FISTA iterations they took in all, ``warm_rows``, those started from their
    sample's previous code, ``warm_iterations``, the iterations of those, and ``reused_rows``, those whose feature
    had just been coded (no iteration)."""

    dense_backward: int = 0
    rows: int = 0
    iterations: int = 0
    warm_rows: int = 0
    warm_iterations: int = 0
    reused_rows: int = 0


def _is_well_conditioned(chol: Tensor, info: Tensor) -> bool:
    """Whether a Cholesky factorisation succeeded and its pivots do not reveal a numerically singular matrix.

    ``(max r_ii / min r_ii)²`` is a lower bound on the condition number: when its inverse is at most
    ``size·eps`` (the cut-off ``torch.linalg.pinv`` uses for the same matrix) the matrix is treated as singular.
    """
    if int(info) != 0:
        return False
    pivots = chol.diagonal()
    return float((pivots.min() / pivots.max()) ** 2) > chol.shape[0] * torch.finfo(chol.dtype).eps


def _psd_solve(M: Tensor, rhs: Tensor) -> tuple[Tensor, bool]:
    """``M⁺ rhs`` for a symmetric positive semi-definite ``M`` and whether ``M`` is (numerically) non-singular:
    Cholesky when it is, else the pseudo-inverse (by eigen-decomposition)."""
    chol, info = torch.linalg.cholesky_ex(M)
    if _is_well_conditioned(chol, info):
        return torch.cholesky_solve(rhs[:, None], chol)[:, 0], True
    return torch.linalg.pinv(M, hermitian=True) @ rhs, False


def lasso_solution_vjp(D: Tensor, A: Tensor, grad_A: Tensor, stats: CodingStats | None = None) -> Tensor:
    """Vector-Jacobian product of the lasso solution map ``f ↦ α*(f)``: ``grad_F [B, d]`` from ``grad_A [B, N]``.

    At a solution ``α*`` with active set ``S = {i : α*_i ≠ 0}`` the optimality conditions
    ``D_Sᵀ(D_S α_S − f) + λ sign(α_S) = 0`` give ``∂α_S/∂f = (D_SᵀD_S)⁻¹ D_Sᵀ`` and 0 off ``S``, so
    ``grad_f = D_S (D_SᵀD_S)⁻¹ g_S`` (through the reconstruction ``Dα`` this is the projection onto the span of
    the active columns). It is exact when ``A`` is the unique solution: ``|S| ≤ d`` and ``D_SᵀD_S``
    non-singular (general position). A code stopped early can be dense (``|S| > d``) or have a singular
    ``D_SᵀD_S``; it is then not a unique lasso solution and the formula has no inverse. For those samples the
    pseudo-inverse gradient ``(D_Sᵀ)⁺ g_S`` is used (``D_S (D_SᵀD_S)⁺ g_S``, or ``(D_S D_Sᵀ)⁺ D_S g_S`` when
    ``|S| > d``): the derivative of the minimum-norm least-squares fit of ``f`` by the columns in ``S``. With
    ``|S| > d`` and ``D_S`` of rank ``d`` it makes ``d(Dα)/df`` the identity: the reconstruction is
    differentiated as if it followed ``f`` exactly. A ``DenseCodeWarning`` says when that happens, and ``stats``
    (when given) counts it.

    One small solve per sample, since active sets differ between samples; float64, since ``D_SᵀD_S`` squares
    the condition number of bank features. Memory: one ``|S| × |S|`` (or ``d × d``) system at a time plus at
    most ``DᵀD`` and ``DDᵀ`` (each formed once, when cheaper than per-sample products), never ``B × N × N``.
    """
    D64 = D.detach().double()
    d, N = D.shape
    active = A.detach() != 0
    counts = active.sum(dim=1).tolist()
    columns = active.nonzero()[:, 1].split(counts)
    gram = D64.T @ D64 if sum(k * k for k in counts if k <= d) > N * N else None
    outer = D64 @ D64.T if any(k > d for k in counts) else None
    grad_F = D64.new_zeros(A.shape[0], d)
    inexact = 0
    for b, S in enumerate(columns):
        k = S.numel()
        if k == 0:
            continue
        D_S, g_S = D64[:, S], grad_A[b, S].double()
        if k <= d:
            z, exact = _psd_solve(gram[S][:, S] if gram is not None else D_S.T @ D_S, g_S)
            grad_F[b] = D_S @ z
        else:  # D_S D_Sᵀ = DDᵀ − D_off D_offᵀ: cheaper when few columns are off
            D_off = D64[:, ~active[b]]
            grad_F[b], _ = _psd_solve(outer - D_off @ D_off.T if N - k < k else D_S @ D_S.T, D_S @ g_S)
            exact = False
        inexact += not exact
    if inexact and stats is not None:
        stats.dense_backward += 1
    if inexact:
        warnings.warn(DenseCodeWarning(
            "implicit lasso gradient at codes that are not unique lasso solutions (more non-zeros than the feature "
            "size, or a singular D_S^T D_S: a code stopped early?); the pseudo-inverse gradient (D_S^T)^+ g_S is "
            "used for them, which for a dense code passes the reconstruction's gradient through unchanged (as BPDA "
            "does). Raise the iteration cap or lower the tolerance for exact gradients, or differentiate the "
            "iterations actually run (purification 'unrolled')."), stacklevel=2)
    return grad_F.to(grad_A.dtype)


class ImplicitLasso(torch.autograd.Function):
    """``A = solve(F)`` without an autograd graph; backward by implicit differentiation (``lasso_solution_vjp``).

    Memory: the codes and the bank, whatever the solver's iteration count. No gradient for ``D``.
    """

    @staticmethod
    def forward(ctx: Any, F: Tensor, D: Tensor, solve: Callable[[Tensor], Tensor],
                stats: CodingStats | None) -> Tensor:
        A = solve(F)
        ctx.save_for_backward(D, A)
        ctx.stats = stats
        return A

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_A: Tensor) -> tuple[Tensor, None, None, None]:
        D, A = ctx.saved_tensors
        return lasso_solution_vjp(D, A, grad_A, ctx.stats), None, None, None


def implicit_lasso(D: Tensor, F: Tensor, solve: Callable[[Tensor], Tensor], stats: CodingStats | None = None) -> Tensor:
    """Codes ``solve(F) [B, N]`` (a lasso solver over ``D [d, N]``, e.g. ``fista``) with implicit gradients to ``F``.

    ``solve`` runs under ``no_grad``; run it to convergence: the gradient is exact only at a lasso solution.
    """
    if D.requires_grad:
        raise ValueError("implicit lasso gradients are for the features only: pass a dictionary that does not "
                         "require grad (D.detach())")
    return ImplicitLasso.apply(F, D, solve, stats)


def ista_released(D: Tensor, F: Tensor, lam: float = 0.1, step: float = 1e-6, tol: float = 8e-4,
                  max_iter: int = 2000, differentiable: bool = False) -> Tensor:
    """The released algorithm: codes ``A [B, N]`` by plain ISTA with the paper's fixed ``step``.

    As released: the eigenvalues of ``DᵀD`` are recomputed on every call (the release used the general
    ``torch.eig``; ``eigvalsh`` here) and a ``step`` above ``1/λ_max`` is refused; each iteration is
    ``α ← shrink(α − step·Dᵀ(Dα − f), step·λ)`` from zero, and it stops once the Frobenius norm of the whole
    batch's code change is below ``tol`` or after ``max_iter`` iterations (the release ran up to 2001). That
    batch-wide rule is kept as released: a sample's code depends on the other samples in its batch.
    Per-dataset steps from the paper: audio/visual 1e-6/6e-6 (MUSIC), 7e-7/2e-6 (AVE), 5.8e-7/2e-6
    (Kinetics-Sounds). Such small steps converge slowly and can stop early on the small code change.
    """
    with torch.set_grad_enabled(differentiable):
        top = float(torch.linalg.eigvalsh(D.detach().T @ D.detach())[-1])
        if step * top > 1:
            raise ValueError(f"ISTA step {step:g} is too large for this dictionary: step·λ_max(DᵀD) = "
                             f"{step * top:.3g} > 1 (λ_max = {top:.4g})")
        A = F.new_zeros(F.shape[0], D.shape[1])
        for _ in range(max_iter):
            prev = A
            A = soft_threshold(A - step * ((A @ D.T - F) @ D), step * lam)
            if float((A - prev).detach().norm()) < tol:
                break
    return A
