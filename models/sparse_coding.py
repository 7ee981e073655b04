"""Batched lasso sparse coding of features over a dictionary (the memory-bank defense's solver).

Every solver finds, for each row ``f`` of ``F [B, d]``, a code ``α`` (a row of ``A [B, N]``) for

    min_α  ½‖Dα − f‖² + λ‖α‖₁,        D [d, N] (columns are bank features).

``fista`` is the solver to use: the whole batch at once, step ``1/L`` with ``L`` the largest eigenvalue of
DᵀD (estimated once per bank by power iteration), Nesterov momentum (Beck & Teboulle, 2009).
``ista_released`` reproduces the released code's algorithm for fidelity and benchmarks: an eigen-decomposition
of DᵀD on every call and plain ISTA with the paper's fixed step.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


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


def fista(D: Tensor, F: Tensor, lam: float = 0.1, L: float | None = None, max_iter: int = 2000,
          tol: float = 1e-3, differentiable: bool = False, gram: Tensor | None = None) -> Tensor:
    """Lasso codes ``A [B, N]`` of ``F [B, d]`` over ``D [d, N]`` by batched FISTA, starting from zero.

    ``L``: Lipschitz constant (``lipschitz_constant(D)`` when None); an underestimate can diverge.
    ``gram``: a precomputed ``DᵀD [N, N]``; then each iteration is one ``[B, N] × [N, N]`` product instead
    of two products with ``D``.
    Stopping: after ``max_iter`` iterations or once ``max_b ‖α_k − α_{k−1}‖₂ / ‖α_k‖₂ < tol``, the largest
    per-sample relative L2 change of the code (a sample whose code is zero counts as 0; zero is then its
    optimum). Relative, so it does not depend on the scale of the features (the released absolute rule
    fires after a few iterations on raw features, whose codes are small numbers) nor on the batch size.
    ``differentiable``: keep the autograd graph through the unrolled iterations (white-box attacks through
    the sparse coding, training through the defense); otherwise run under ``no_grad``.
    """
    if L is None:
        L = lipschitz_constant(D)
    if L <= 0:
        return F.new_zeros(F.shape[0], D.shape[1])
    with torch.set_grad_enabled(differentiable):
        DtF = F @ D
        x = F.new_zeros(F.shape[0], D.shape[1])
        y = x
        t = 1.0
        for _ in range(max_iter):
            grad = y @ gram - DtF if gram is not None else (y @ D.T - F) @ D
            x_new = soft_threshold(y - grad / L, lam / L)
            delta = x_new - x
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = x_new + ((t - 1) / t_next) * delta
            x, t = x_new, t_next
            change = delta.detach().norm(dim=1) / x_new.detach().norm(dim=1).clamp_min(1e-30)
            if float(change.max()) < tol:
                break
    return x


def ista_released(D: Tensor, F: Tensor, lam: float = 0.1, step: float = 1e-6, tol: float = 8e-4,
                  max_iter: int = 2000, differentiable: bool = False) -> Tensor:
    """The released algorithm: codes ``A [B, N]`` by plain ISTA with the paper's fixed ``step``.

    As released: the eigenvalues of ``DᵀD`` are recomputed on every call (the release used the general
    ``torch.eig``; ``eigvalsh`` here) and a ``step`` above ``1/λ_max`` is refused; each iteration is
    ``α ← shrink(α − step·Dᵀ(Dα − f), step·λ)`` from zero, and it stops once the Frobenius norm of the whole
    batch's code change is below ``tol`` or after ``max_iter`` iterations (the release ran up to 2001).
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
