"""Self-supervised pretraining of the frame encoder on the run's own training frames (``--weights_frame simclr``),
for machines that cannot download ImageNet weights.

SimCLR (Chen et al., ICML 2020): two random views of every frame (crop of 30-100 % of the area resized back,
horizontal flip, brightness / contrast / saturation jitter, grayscale with probability 0.2), the encoder's pooled
embedding through a two-layer projection, and the NT-Xent loss (temperature 0.1): each view must pick its twin
among the batch's other 2B - 2 views. No labels and no audio are used. A view's random parameters come from a
generator seeded by (seed, epoch, sample index), so they do not depend on the batch size or the process count.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dataset.loaders import build_dataset, build_loader, set_epoch, to_device
from utils.distributed import DistInfo, all_reduce_sum

SIMCLR_TEMPERATURE = 0.1
CROP_AREA = (0.3, 1.0)
JITTER = 0.4  # brightness, contrast and saturation factors drawn from [1 - JITTER, 1 + JITTER]
GRAYSCALE_P = 0.2


def _view_params(seed: int, epoch: int, index: int, view: int) -> Tensor:
    """``[9]`` uniform numbers of one sample's view: crop area, aspect, centre x / y, flip, three jitters, gray."""
    generator = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + index) * 2 + view)
    return torch.rand(9, generator=generator)


def augment(images: Tensor, params: Tensor) -> Tensor:
    """Augmented views of ``images [N, 3, H, W]`` in [0, 1] from ``params [N, 9]`` uniform numbers in [0, 1)."""
    n = images.shape[0]
    area = CROP_AREA[0] + (CROP_AREA[1] - CROP_AREA[0]) * params[:, 0]
    aspect = torch.exp((params[:, 1] - 0.5) * 2 * torch.log(torch.tensor(4 / 3)))
    scale_x = (area * aspect).sqrt().clamp(max=1.0)
    scale_y = (area / aspect).sqrt().clamp(max=1.0)
    centre_x = (2 * params[:, 2] - 1) * (1 - scale_x)
    centre_y = (2 * params[:, 3] - 1) * (1 - scale_y)
    flip = torch.where(params[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = scale_x * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = scale_y, centre_y
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    factors = (1 - JITTER + 2 * JITTER * params[:, 5:8]).to(images.device, images.dtype)
    gray = (views * torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    views = views * factors[:, 0].view(n, 1, 1, 1)  # brightness
    mean = gray.mean(dim=(2, 3), keepdim=True) * factors[:, 0].view(n, 1, 1, 1)
    views = (views - mean) * factors[:, 1].view(n, 1, 1, 1) + mean  # contrast
    luma = (views * torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    views = (views - luma) * factors[:, 2].view(n, 1, 1, 1) + luma  # saturation
    to_gray = (params[:, 8] < GRAYSCALE_P).to(images.device).view(n, 1, 1, 1)
    views = torch.where(to_gray, luma.expand_as(views), views)
    return views.clamp(0, 1)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = SIMCLR_TEMPERATURE) -> Tensor:
    """SimCLR's NT-Xent on two views' projections ``[B, E]``: cross-entropy of each view picking its twin among
    the other 2B - 1 views by cosine similarity / ``temperature``."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent needs two [B, E] projections of one shape, got {tuple(z1.shape)}, "
                         f"{tuple(z2.shape)}")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    batch = z1.shape[0]
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(logits, targets)


class SimCLR(nn.Module):
    """The frame encoder plus SimCLR's projection head (Linear-ReLU-Linear) on its pooled embedding."""

    def __init__(self, encoder: nn.Module, proj_dim: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        dim = encoder.out_dim
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, proj_dim))

    def forward(self, images: Tensor) -> Tensor:
        feat, _ = self.encoder(images.unsqueeze(2))  # one frame: [N, 3, 1, H, W]
        return self.projector(feat)


def pretrain_frame_encoder(encoder: nn.Module, args: argparse.Namespace, info: DistInfo) -> list[dict]:
    """Train ``encoder`` in place with SimCLR on the training split's frames for ``args.pretrain_epochs`` epochs
    (AdamW, lr ``args.pretrain_lr``, weight decay 1e-4); returns the per-epoch mean losses."""
    loader = build_loader(build_dataset(args, "train"), args, info, train=True)
    torch.manual_seed(args.seed)
    model = SimCLR(encoder).to(info.device)
    wrapped = DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None) \
        if info.enabled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, weight_decay=1e-4)
    model.train()
    history = []
    for epoch in range(args.pretrain_epochs):
        set_epoch(loader, epoch)
        totals = torch.zeros(2, dtype=torch.float64)
        for batch in tqdm(loader, desc=f"simclr {epoch}", disable=not info.is_main, leave=False, dynamic_ncols=True):
            frames, _, _ = to_device(batch, info.device)
            images = frames.mean(dim=2)  # a clip's frames averaged, as the encoder's map is
            indices = batch["index"].tolist()
            views = [augment(images, torch.stack([_view_params(args.seed, epoch, i, v) for i in indices]))
                     for v in (0, 1)]
            loss = nt_xent(wrapped(views[0]), wrapped(views[1]))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"--weights_frame simclr: non-finite loss at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals += torch.tensor([loss.item() * len(indices), len(indices)], dtype=torch.float64)
        totals = all_reduce_sum(totals, info)
        history.append({"epoch": epoch, "simclr_loss": totals[0].item() / max(totals[1].item(), 1)})
        if info.is_main:
            tqdm.write(f"simclr pretraining of the frame encoder: epoch {epoch}, loss {history[-1]['simclr_loss']:.4f}")
    return history
