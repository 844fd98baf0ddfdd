"""The 8 dihedral transforms of a square tile: rotations by 0, 90, 180 and 270 degrees, of the
tile and of its mirror image. Land cover seen from above has no preferred orientation, so they
serve as training augmentation and as test-time augmentation. One module for both: numpy views
for inference, a random torch transform per tile for training.

Tiles are ``(N, C, H, W)`` with ``H == W``; op ``k`` in 0..7 is a rotation by ``k % 4`` quarter
turns (counter-clockwise, ``rot90`` over the last two axes), after a left-right mirror for
``k >= 4``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ModelLoadError


def dihedral_views(batch: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral transforms of square tiles ``(N, C, H, H)``: 0, 90, 180 and 270 degree
    rotations, of the tiles and of their mirror images (identity first). Land cover seen from
    above has no preferred orientation, so a classifier's mean over them is steadier."""
    if batch.shape[-1] != batch.shape[-2]:
        raise ModelLoadError(f"test-time augmentation needs square tiles, not {batch.shape[-2]}x{batch.shape[-1]}")
    mirrored = batch[..., ::-1]
    return [np.ascontiguousarray(np.rot90(tiles, k, axes=(-2, -1))) for tiles in (batch, mirrored) for k in range(4)]


def random_dihedral(x: Any, generator: Any) -> Any:
    """Random dihedral transform per tile of a batch ``(N, C, H, W)`` (torch): one of 8 =
    identity, three 90-degree rotations, and the four with a horizontal flip first."""
    import torch

    ops = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for op in range(8):
        idx = (ops == op).nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        part = x[idx]
        if op >= 4:
            part = part.flip(-1)
        if op % 4:
            part = torch.rot90(part, op % 4, dims=(-2, -1))
        out[idx] = part
    return out
