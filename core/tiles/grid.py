"""A regular grid of tiles over a raster area, in source pixels.

Edges: tiles start every ``stride`` pixels from the area's top-left corner. When the last tile
would stop short of the right (bottom) edge, one more tile is added flush with that edge, so it
overlaps its neighbour more than the others do: every pixel is covered and every tile lies
inside the area. An area smaller than one tile gets a single tile at offset 0 that reaches past
the area's edge; the reader fills the part outside the raster with nodata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..errors import RasterInputError


def tile_offsets(length: int, footprint: int, stride: int) -> list[int]:
    """Start offsets of tiles of ``footprint`` pixels, every ``stride`` pixels, covering
    ``[0, length)``; see the module docstring for the edge rule."""
    if footprint <= 0 or stride <= 0:
        raise RasterInputError("tile size and stride must be positive")
    if stride > footprint:
        raise RasterInputError(
            f"stride ({stride} px) larger than the tile ({footprint} px) would leave gaps"
        )
    if length <= footprint:
        return [0]
    offsets = list(range(0, length - footprint + 1, stride))
    if offsets[-1] + footprint < length:
        offsets.append(length - footprint)
    return offsets


@dataclass(frozen=True)
class Tile:
    """One tile: its grid position and its window in area pixels (row/col offsets, size)."""

    grid_row: int
    grid_col: int
    row_off: int
    col_off: int
    height: int
    width: int


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``footprint`` (rows, cols) source pixels every ``stride`` (rows, cols) over an
    area of ``height`` x ``width`` source pixels. Iterates row by row, left to right."""

    height: int
    width: int
    footprint: tuple[int, int]
    stride: tuple[int, int]

    @property
    def row_offsets(self) -> list[int]:
        return tile_offsets(self.height, self.footprint[0], self.stride[0])

    @property
    def col_offsets(self) -> list[int]:
        return tile_offsets(self.width, self.footprint[1], self.stride[1])

    def __len__(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)

    def __iter__(self) -> Iterator[Tile]:
        cols = self.col_offsets
        for grid_row, row_off in enumerate(self.row_offsets):
            for grid_col, col_off in enumerate(cols):
                yield Tile(grid_row, grid_col, row_off, col_off, self.footprint[0], self.footprint[1])
