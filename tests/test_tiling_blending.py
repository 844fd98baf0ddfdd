"""Tile grid coverage and edges; blending of overlapping tiles."""

import numpy as np
import pytest

from glassbox.core.tiles.blending import RowBandAccumulator, tent_window
from glassbox.core.errors import RasterInputError
from glassbox.core.tiles.grid import TileGrid, tile_offsets


@pytest.mark.parametrize("length", [1, 15, 16, 17, 31, 32, 33, 100, 257])
@pytest.mark.parametrize("footprint,stride", [(16, 16), (16, 8), (16, 5), (16, 1), (7, 3)])
def test_every_pixel_covered_and_tiles_inside(length, footprint, stride):
    offsets = tile_offsets(length, footprint, stride)
    covered = np.zeros(length, dtype=int)
    for off in offsets:
        covered[off : off + footprint] += 1
        if length >= footprint:
            assert 0 <= off and off + footprint <= length, "tiles stay inside the area"
    assert covered.min() >= 1
    assert offsets == sorted(set(offsets))
    steps = np.diff(offsets)
    assert np.all(steps <= stride) and np.all(steps >= 1)


def test_edge_rule_last_tile_flush_with_edge():
    assert tile_offsets(40, 16, 16) == [0, 16, 24]
    assert tile_offsets(32, 16, 16) == [0, 16]
    assert tile_offsets(10, 16, 8) == [0]


def test_stride_larger_than_tile_is_refused():
    with pytest.raises(RasterInputError, match="gaps"):
        tile_offsets(100, 16, 17)


def test_grid_iterates_row_major_with_count():
    grid = TileGrid(height=40, width=70, footprint=(16, 16), stride=(8, 8))
    tiles = list(grid)
    assert len(tiles) == len(grid) == len(grid.row_offsets) * len(grid.col_offsets)
    assert [(t.grid_row, t.grid_col) for t in tiles] == sorted((t.grid_row, t.grid_col) for t in tiles)
    cover = np.zeros((40, 70), int)
    for t in tiles:
        cover[t.row_off : t.row_off + t.height, t.col_off : t.col_off + t.width] += 1
    assert cover.min() >= 1


def test_tent_window_peaks_in_centre_and_never_zero():
    w = tent_window(16, 16)
    assert w.shape == (16, 16)
    assert w.min() > 0
    assert w[7:9, 7:9].min() == w.max()
    assert w[0, 0] < w[4, 4] < w[8, 8]
    np.testing.assert_allclose(w, w.T)


def test_blending_is_the_weighted_mean_of_covering_tiles():
    acc = RowBandAccumulator(width=24, num_classes=2, height=16)
    w = tent_window(16, 16)
    p_a, p_b = np.array([0.9, 0.1]), np.array([0.2, 0.8])
    acc.add(0, 0, p_a, w)
    acc.add(0, 8, p_b, w)
    [(first, probs, covered)] = list(acc.pop_rows(16))
    assert first == 0 and covered.all()
    # column 10 is covered by tile A (its column 10) and tile B (its column 2)
    wa, wb = w[5, 10], w[5, 2]
    expected = (wa * p_a + wb * p_b) / (wa + wb)
    np.testing.assert_allclose(probs[:, 5, 10], expected, rtol=1e-6)
    np.testing.assert_allclose(probs[:, 5, 3], p_a, rtol=1e-6)  # only tile A
    np.testing.assert_allclose(probs[:, 5, 20], p_b, rtol=1e-6)  # only tile B
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-6)


def test_streaming_rows_equals_blending_all_at_once():
    rng = np.random.default_rng(3)
    grid = TileGrid(height=50, width=37, footprint=(12, 12), stride=(5, 5))
    w = tent_window(12, 12)
    tiles = list(grid)
    probs = rng.dirichlet(np.ones(3), len(tiles))

    whole = RowBandAccumulator(37, 3, 50)
    for t, p in zip(tiles, probs):
        whole.add(t.row_off, t.col_off, p, w)
    [(_, expected, _)] = list(whole.pop_rows(50))

    streamed = RowBandAccumulator(37, 3, 50)
    out = np.zeros((3, 50, 37), np.float32)
    rows = grid.row_offsets
    for t, p in zip(tiles, probs):
        streamed.add(t.row_off, t.col_off, p, w)
        if t.grid_col == len(grid.col_offsets) - 1 and t.grid_row + 1 < len(rows):
            for first, block, _ in streamed.pop_rows(rows[t.grid_row + 1]):
                out[:, first : first + block.shape[1]] = block
            assert streamed.weights.shape[0] <= 12 + 5  # never more than about one tile of rows
    for first, block, _ in streamed.pop_rows(50):
        out[:, first : first + block.shape[1]] = block
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_uncovered_pixels_are_reported():
    acc = RowBandAccumulator(width=10, num_classes=2, height=10)
    w = np.zeros((4, 4), np.float32)  # a tile whose pixels are all nodata
    acc.add(0, 0, np.array([0.5, 0.5]), w)
    [(_, _, covered)] = list(acc.pop_rows(10))
    assert not covered.any()


def test_per_pixel_values_are_blended_pixel_by_pixel():
    acc = RowBandAccumulator(width=12, num_classes=1, height=8)
    w = tent_window(8, 8)
    a = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    b = np.full((1, 8, 8), 100.0, np.float32)
    acc.add(0, 0, a, w)
    acc.add(0, 4, b, w)
    [(_, blended, covered)] = list(acc.pop_rows(8))
    assert covered.all()
    np.testing.assert_allclose(blended[0, 3, 1], a[0, 3, 1])  # only tile a
    expected = (w[3, 6] * a[0, 3, 6] + w[3, 2] * 100.0) / (w[3, 6] + w[3, 2])
    np.testing.assert_allclose(blended[0, 3, 6], expected, rtol=1e-6)
    np.testing.assert_allclose(blended[0, 3, 10], 100.0)  # only tile b


def test_prefetched_batches_keep_order_raise_errors_and_stop_early():
    import threading

    from glassbox.core.tiles.loop import prefetched

    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad tile")

    got = []
    with pytest.raises(ValueError, match="bad tile"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]
    before = threading.active_count()
    stream = prefetched(iter(range(1000)), depth=2)
    assert next(stream) == 0
    stream.close()  # the reader thread ends instead of filling the queue forever
    assert threading.active_count() <= before
