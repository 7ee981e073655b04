"""External feature memory banks (the paper's defense) and the defended audio-visual model.

A bank ``D [d, N]`` holds training-set features as columns. A test feature ``f`` is sparse-coded over it
(lasso, ``defenses.sparse_coding``) and replaced by ``a·Dα + (1 − a)·f``.

Bank files (``save_bank`` / ``load_bank``): ``{"D": [d, N] float tensor, "meta": {"feature_dim", "size",
"method", "seed", ...}}`` written atomically and read with ``weights_only=True``; a bare ``[d, N]`` tensor
(the released ``Dv_best.pth`` / ``Da_best.pth``) loads too.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dataset.loaders import to_device
from defenses.protocol import AdaptiveAttack
from defenses.sparse_coding import CodingStats, fista_codes, implicit_lasso, ista_released, lipschitz_constant
from defenses.warm_start import CodeCache
from models.av_model import AVModel
from utils.fileio import CheckpointError, atomic_path, non_finite_entries
from utils.precision import autocast_off

BANK_METHODS = ("random", "kmeans")
SOLVERS = ("fista", "ista")
PURIFICATION_MODES = ("implicit", "unrolled", "bpda")


class BankError(CheckpointError, ValueError):
    """A memory bank that is missing, unreadable, malformed or made for another feature size."""


def build_bank(features: Tensor, size: int = 1024, method: str = "random", seed: int = 0,
               kmeans_iters: int = 20) -> Tensor:
    """A bank ``[d, size]`` whose columns are built from ``features [n, d]``, deterministic for a seed.

    ``random``: a seeded random subset of the features. ``kmeans``: k-means centres from a seeded k-means++
    initialisation and at most ``kmeans_iters`` Lloyd iterations (stopping early once the assignment is
    stable). With fewer than ``size`` features all ``n`` are used as they are (``[d, n]``) and a warning says so.
    """
    if method not in BANK_METHODS:
        raise ValueError(f"bank method must be one of {BANK_METHODS}, got '{method}'")
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [n, d] matrix, got {tuple(features.shape)}")
    features = features.detach().float()
    n = features.shape[0]
    if n <= size:
        if n < size:
            warnings.warn(f"only {n} features for a bank of {size}: the bank holds all {n}", stacklevel=2)
        return features.T.contiguous()
    gen = torch.Generator().manual_seed(seed)
    if method == "random":
        idx = torch.randperm(n, generator=gen)[:size].to(features.device)
        return features[idx].T.contiguous()
    return kmeans(features, size, gen, kmeans_iters).T.contiguous()


def _nearest(x: Tensor, centres: Tensor, chunk: int = 8192) -> Tensor:
    """Index of the nearest centre for each row of ``x``, in row chunks (bounded memory for large ``n``)."""
    c_sq = centres.pow(2).sum(dim=1)
    return torch.cat([(c_sq - 2 * part @ centres.T).argmin(dim=1) for part in x.split(chunk)])


def kmeans(x: Tensor, k: int, gen: torch.Generator, iters: int) -> Tensor:
    """``k`` centres ``[k, d]`` of ``x [n, d]``: k-means++ seeding (draws from ``gen``), then Lloyd iterations.

    A cluster that becomes empty keeps its previous centre.
    """
    x_sq = x.pow(2).sum(dim=1)

    def sq_dist_to(i: int) -> Tensor:
        return (x_sq - 2 * (x @ x[i]) + x_sq[i]).clamp_min(0)

    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    centres = x.new_empty(k, x.shape[1])
    centres[0] = x[first]
    nearest = sq_dist_to(first)
    for j in range(1, k):
        weights = nearest.cpu().double()
        if weights.sum() <= 0:  # every point coincides with a centre: draw uniformly
            weights = torch.ones_like(weights)
        pick = int(torch.multinomial(weights, 1, generator=gen))
        centres[j] = x[pick]
        nearest = torch.minimum(nearest, sq_dist_to(pick))
    assign = None
    for _ in range(iters):
        new_assign = _nearest(x, centres)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = x.new_zeros(k, x.shape[1]).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
    return centres


def collect_features(model: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device | str,
                     max_batches: int | None = None) -> tuple[Tensor | None, Tensor | None]:
    """``(feat_v [n, dv], feat_a [n, da])`` of ``model`` over ``loader`` on the CPU; None for an unused modality.

    Runs in eval mode under ``no_grad`` (the model's train/eval mode is restored afterwards); batches are
    dicts with ``frames`` and ``audio`` as made by ``dataset.av_dataset``.
    """
    was_training = model.training
    model.eval()
    feats_v: list[Tensor] = []
    feats_a: list[Tensor] = []
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                frames, audio, _ = to_device(batch, torch.device(device))
                out = model(frames, audio)
                if out.feat_v is not None:
                    feats_v.append(out.feat_v.float().cpu())
                if out.feat_a is not None:
                    feats_a.append(out.feat_a.float().cpu())
    finally:
        model.train(was_training)
    return (torch.cat(feats_v) if feats_v else None, torch.cat(feats_a) if feats_a else None)


def save_bank(path: str | os.PathLike, D: Tensor, meta: dict[str, Any] | None = None) -> None:
    """Write bank ``D [d, N]`` and ``meta`` (plain values: ``method``, ``seed``, source run id ...) atomically.

    ``feature_dim`` and ``size`` are filled in from ``D``.
    """
    if D.dim() != 2:
        raise ValueError(f"a bank is a [feature_dim, size] matrix, got {tuple(D.shape)}")
    meta = {**(meta or {}), "feature_dim": D.shape[0], "size": D.shape[1]}
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save({"D": D.detach().float().cpu().contiguous(), "meta": meta}, tmp)


def load_bank(path: str | os.PathLike, expected_dim: int | None = None) -> Tensor:
    """Bank ``D [d, N]`` from ``path`` (our format or a bare tensor); ``expected_dim`` is the model's feature size.

    Raises ``BankError`` when the file is missing or unreadable, does not hold a 2-D bank, or its feature
    size differs from ``expected_dim``.
    """
    path = Path(path)
    if not path.is_file():
        raise BankError(f"{path}: memory bank not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BankError(f"{path}: cannot load the memory bank ({err})") from None
    D = obj.get("D") if isinstance(obj, dict) else obj
    if not isinstance(D, Tensor) or D.dim() != 2 or not D.is_floating_point():
        found = tuple(D.shape) if isinstance(D, Tensor) else type(D).__name__
        raise BankError(f"{path}: expected a float [feature_dim, size] bank, found {found}")
    if non_finite_entries({"D": D}):
        bad = int((~torch.isfinite(D)).sum())
        raise BankError(f"{path}: the memory bank holds {bad} non-finite values (NaN or inf); rebuild it "
                        f"(main_defense.py --mode build_bank)")
    if expected_dim is not None and D.shape[0] != expected_dim:
        raise BankError(f"{path}: the bank holds {D.shape[0]}-d features but the model's features are "
                        f"{expected_dim}-d (bank shape {tuple(D.shape)} is [feature_dim, size])")
    return D.float()


class _Identity(torch.autograd.Function):
    """Returns ``purified`` forward and passes the gradient to ``f`` unchanged (BPDA)."""

    @staticmethod
    def forward(ctx: Any, f: Tensor, purified: Tensor) -> Tensor:
        return purified.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class MemoryBank(nn.Module):
    """Purifies features ``f [B, d]`` as ``mix·Dα + (1 − mix)·f`` with ``α`` the lasso code of ``f`` over ``D``.

    ``solver``: ``fista`` (step ``1/L``, ``L`` computed once here by power iteration) or ``ista``
    (``ista_released``: the paper's fixed ``step`` and an eigen-decomposition on every call).
    ``mode``, the gradient of the purification when autograd records (the input needs gradients):
    ``implicit`` (the white-box default) differentiates the lasso solution through its optimality conditions
    (``defenses.sparse_coding.implicit_lasso``: memory independent of the iteration count, exact at a converged
    code); ``unrolled`` backpropagates through the solver's iterations as the released code did (memory grows
    with the iterations); ``bpda`` purifies forward and passes gradients through as the identity.
    The coding runs in float32 whatever the input's dtype, with autocast disabled around it; the output has the
    input's dtype.
    ``warm_start`` (FISTA, outside ``unrolled`` gradients): inside a scope of ``cache``
    (``defenses.warm_start``), each sample's coding starts from its own previous code; otherwise from zero.
    Unrolled gradients always start from zero: differentiating a few iterations from a fixed start would not be
    the gradient of the solution.
    """

    def __init__(self, D: Tensor, lam: float = 0.1, mix: float = 0.5, solver: str = "fista",
                 step: float | None = None, tol: float = 8e-4, max_iter: int = 2000,
                 mode: str = "implicit", warm_start: bool = True) -> None:
        super().__init__()
        if D.dim() != 2:
            raise ValueError(f"a bank is a [feature_dim, size] matrix, got {tuple(D.shape)}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got '{solver}'")
        if solver == "ista" and (step is None or step <= 0):
            raise ValueError("solver 'ista' needs a positive step (the paper's alpha_a / alpha_v)")
        if not 0 <= mix <= 1:
            raise ValueError(f"bank mix must be in [0, 1], got {mix}")
        D = D.detach().float()
        self.register_buffer("D", D)
        self.register_buffer("gram", D.T @ D, persistent=False)
        self.L = lipschitz_constant(D)
        if solver == "ista" and step * self.L > 1:  # fail here, not at the first forward pass
            raise ValueError(f"ISTA step {step:g} is too large for this bank: step·λ_max(DᵀD) = {step * self.L:.3g} "
                             f"> 1 (λ_max = {self.L:.4g}); the paper's steps assume its feature scale")
        self.lam = lam
        self.mix = mix
        self.solver = solver
        self.step = step
        self.tol = tol
        self.max_iter = max_iter
        self.mode = mode
        self.warm_start = warm_start
        self.cache = CodeCache()
        self.stats = CodingStats()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in PURIFICATION_MODES:
            raise ValueError(f"purification mode must be one of {PURIFICATION_MODES}, got '{value}'")
        self._mode = value

    @property
    def feature_dim(self) -> int:
        return self.D.shape[0]

    def code(self, f: Tensor, differentiable: bool = False) -> Tensor:
        """Lasso codes ``α [B, N]`` of ``f [B, d]`` (float32; ``differentiable``: the unrolled graph), warm-started
        per sample inside a scope of ``cache`` (see the class docstring)."""
        D = self.D.float()  # the bank stays float32 even if the module was cast
        if self.solver != "fista":
            return ista_released(D, f, self.lam, self.step, self.tol, self.max_iter, differentiable)
        seeds = self.cache.seeds(f, D.shape[1]) if self.warm_start and not differentiable else None
        if seeds is None:
            result = fista_codes(D, f, self.lam, self.L, self.max_iter, self.tol, differentiable, self.gram.float())
            self._count(result.iterations, 0, 0)
            return result.codes
        codes = seeds.init.clone()
        todo = ~seeds.repeated
        iterations = torch.zeros(0, dtype=torch.long)
        if bool(todo.any()):
            result = fista_codes(D, f[todo], self.lam, self.L, self.max_iter, self.tol, gram=self.gram.float(),
                                 init=seeds.init[todo])
            codes[todo], iterations = result.codes, result.iterations
        self.cache.store(seeds, f, codes)
        warm = seeds.known[todo].cpu()
        self._count(iterations, int(warm.sum()), int(seeds.repeated.sum()))
        self.stats.warm_iterations += int(iterations[warm].sum()) if iterations.numel() else 0
        return codes

    def _count(self, iterations: Tensor, warm_rows: int, reused_rows: int) -> None:
        self.stats.rows += iterations.numel() + reused_rows
        self.stats.iterations += int(iterations.sum())
        self.stats.warm_rows += warm_rows
        self.stats.reused_rows += reused_rows

    def forward(self, f: Tensor) -> Tensor:
        if f.dim() != 2 or f.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [B, {self.feature_dim}] for this bank, got {tuple(f.shape)}")
        with autocast_off(f.device.type):
            purified = self._purify(f.float())
        return purified.to(f.dtype)

    def _purify(self, f: Tensor) -> Tensor:
        """``mix·Dα + (1 − mix)·f`` for float32 ``f``, with the gradient of ``self.mode`` when autograd records."""
        D = self.D.float()
        records = torch.is_grad_enabled() and f.requires_grad
        if records and self.mode == "unrolled":
            codes, f_in = self.code(f, differentiable=True), f
        elif records and self.mode == "implicit":
            codes, f_in = implicit_lasso(D, f, self.code, self.stats), f
        else:
            f_in = f.detach()
            codes = self.code(f_in)
        purified = self.mix * (codes @ D.T) + (1 - self.mix) * f_in
        if records and self.mode == "bpda":
            return _Identity.apply(f, purified)
        return purified

    def extra_repr(self) -> str:
        return (f"feature_dim={self.D.shape[0]}, size={self.D.shape[1]}, lam={self.lam}, mix={self.mix}, "
                f"solver={self.solver}, step={self.step}, tol={self.tol}, max_iter={self.max_iter}, "
                f"mode={self.mode}, warm_start={self.warm_start}, L={self.L:.4g}")


def bank_adaptive_attacks(names: Sequence[str], gradient: str, has_banks: bool) -> list[AdaptiveAttack]:
    """The white-box configurations to evaluate for the attack names ``names``: each loss (``ce``, the released
    adaptive ``ce+cos``) with ``gradient`` (a purification mode) through the banks, and ``bpda`` (CE with the
    identity backward through the purification), which without banks is the plain CE attack and is left out."""
    return [AdaptiveAttack("bpda", "ce", "bpda") if name == "bpda"
            else AdaptiveAttack(name, name, gradient if has_banks else None)
            for name in names if name != "bpda" or has_banks]


def defend_with_banks(model: AVModel, paths: dict[str, str | os.PathLike], *, lam: float, mix: float, solver: str,
                      steps: dict[str, float | None], tol: float, max_iter: int, warm_start: bool = True,
                      device: torch.device | str = "cpu") -> DefendedModel:
    """``model`` with a memory bank per modality it encodes, each loaded from ``paths[modality]``; ``steps`` are
    the ISTA steps per modality; ``warm_start``: see ``MemoryBank``. A bank that does not fit raises
    ``BankError`` naming its file."""
    banks = {}
    for modality, net in (("visual", model.net_frame), ("audio", model.net_sound)):
        if net is None:
            continue
        path = paths[modality]
        D = load_bank(path, net.out_dim).to(device)
        try:
            banks[modality] = MemoryBank(D, lam, mix, solver, steps[modality], tol, max_iter,
                                         warm_start=warm_start)
        except ValueError as err:  # e.g. an ISTA step too large for this bank's spectrum
            raise BankError(f"{path}: {err}") from None
    return DefendedModel(model, banks.get("visual"), banks.get("audio")).to(device)


class DefendedModel(AVModel):
    """An ``AVModel`` whose embeddings are purified by memory banks before the fusion head.

    Shares the wrapped model's ``net_frame`` / ``net_sound`` / ``net_classifier`` (state-dict names and the
    per-module checkpoints stay those of ``AVModel``). ``bank_v`` / ``bank_a`` may be None (that modality is
    not purified). ``encode_visual`` / ``encode_audio`` return the purified embeddings and ``forward`` is
    ``AVModel``'s ``fuse(*encode(...))``, so ``ModelOutput(logits, feat_v, feat_a, fmap_v)`` holds the embeddings
    the head sees (as the released code returned) and an attack that encodes the unattacked modality once
    (under ``no_grad``) gets its purified embedding without differentiating its sparse coding.
    """

    purification_modes: ClassVar[tuple[str, ...]] = PURIFICATION_MODES
    adaptive_advice: ClassVar[str] = (
        "the purification solves a lasso problem in every forward pass (a dynamic defense): evaluate it with "
        "white-box attacks through the sparse coding (purification 'implicit', or 'unrolled'), BPDA "
        "(purification 'bpda': identity backward through the purification), the released adaptive loss "
        "CE + cos(feat_v, feat_a), and a gradient-free attack (Square); report the per-sample worst case")

    def __init__(self, model: AVModel, bank_v: MemoryBank | None = None, bank_a: MemoryBank | None = None) -> None:
        super().__init__(model.net_frame, model.net_sound, model.net_classifier)
        for modality, bank, net in (("visual", bank_v, model.net_frame), ("audio", bank_a, model.net_sound)):
            if bank is None:
                continue
            if net is None:
                raise ValueError(f"a {modality} memory bank was given but the model has no {modality} encoder")
            if bank.feature_dim != net.out_dim:
                raise BankError(f"the {modality} bank holds {bank.feature_dim}-d features but the model's "
                                f"{modality} features are {net.out_dim}-d")
        self.bank_v = bank_v
        self.bank_a = bank_a

    @property
    def runs_optimisation(self) -> bool:
        """Whether the forward pass runs an optimisation that its output depends on (a bank with ``mix > 0``):
        a "dynamic" defense (the robustness checks read this), to be evaluated with ``adaptive_attacks``."""
        return any(bank is not None and bank.mix > 0 for bank in (self.bank_v, self.bank_a))

    @property
    def purification(self) -> str:
        """``implicit``, ``unrolled`` or ``bpda`` (see ``MemoryBank``; ``mixed`` when the banks differ, ``none``
        without banks); setting it switches both banks."""
        modes = {bank.mode for bank in (self.bank_v, self.bank_a) if bank is not None}
        return modes.pop() if len(modes) == 1 else "mixed" if modes else "none"

    @purification.setter
    def purification(self, mode: str) -> None:
        for bank in self._banks():
            bank.mode = mode

    def _banks(self) -> list[MemoryBank]:
        return [bank for bank in (self.bank_v, self.bank_a) if bank is not None]

    @contextmanager
    def purifying(self, mode: str) -> Iterator[None]:
        """Gradients cross the banks in ``mode`` inside the block; each bank's own mode is restored after."""
        before = [(bank, bank.mode) for bank in self._banks()]
        try:
            self.purification = mode
            yield
        finally:
            for bank, old in before:
                bank.mode = old

    def adaptive_attacks(self, names: Sequence[str], gradient: str) -> list[AdaptiveAttack]:
        """``bank_adaptive_attacks`` for this model's banks."""
        return bank_adaptive_attacks(names, gradient, bool(self._banks()))

    @contextmanager
    def sample_scope(self, sample_ids: Tensor | Sequence[int]) -> Iterator[None]:
        """Forward passes of ``len(sample_ids)`` rows inside the block are these samples in this order: each
        bank's coding of a sample starts from that sample's last code in the block (``defenses.warm_start``)."""
        with ExitStack() as stack:
            for bank in self._banks():
                stack.enter_context(bank.cache.scope(sample_ids))
            yield

    @contextmanager
    def sample_rows(self, sample_ids: Tensor | Sequence[int]) -> Iterator[None]:
        """Forward passes of ``len(sample_ids)`` rows inside the block are these samples in this order, within the
        current ``sample_scope`` (an attack's subset of its samples): their codes start from, and update, that
        scope's (``CodeCache.rows``)."""
        with ExitStack() as stack:
            for bank in self._banks():
                stack.enter_context(bank.cache.rows(sample_ids))
            yield

    def diagnostics(self) -> dict[str, int]:
        """``dense_backward``: backward passes whose implicit gradient met codes that are not lasso solutions."""
        return {"dense_backward": sum(bank.stats.dense_backward for bank in self._banks())}

    def encode_visual(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """``(purified feat_v, fmap_v)``; the feature map is the encoder's, not purified."""
        feat_v, fmap_v = super().encode_visual(frames)
        return (self.bank_v(feat_v) if self.bank_v is not None else feat_v), fmap_v

    def encode_audio(self, audio: Tensor) -> Tensor:
        """The purified ``feat_a``."""
        feat_a = super().encode_audio(audio)
        return self.bank_a(feat_a) if self.bank_a is not None else feat_a
