"""The primitives that keep tiled jobs fast and their memory bounded give the same numbers as the
plain ways they replace: batched blending (RowBandAccumulator.add_batch) as tile-by-tile add,
window reads of a tile row (RasterSource.read_tiles) as one read per tile, whole-block-row writes
(BlockRowWriter) as any other order of writes; GDAL's block cache limit is undone after a job."""

import numpy as np
import pytest
import rasterio

from glassbox.core.io.raster import Area, RasterSource, block_cache_limit
from glassbox.core.io.writers import BlockRowWriter, staged_options
from glassbox.core.tiles.blending import RowBandAccumulator, tent_window
from glassbox.core.tiles.grid import TileGrid
from helpers import write_raster


def _streamed(acc_factory, tiles, add):
    acc = acc_factory()
    out = []
    for start in range(0, len(tiles), 7):
        add(acc, tiles[start : start + 7])
        finished = tiles[min(start + 7, len(tiles) - 1)][0] if start + 7 < len(tiles) else acc.height
        out += [(first, p.copy(), c.copy()) for first, p, c in acc.pop_rows(finished)]
    out += [(first, p.copy(), c.copy()) for first, p, c in acc.pop_rows(acc.height)]
    return out


@pytest.mark.parametrize("chunk", [32, 3])
@pytest.mark.parametrize("per_pixel", [False, True])
def test_add_batch_is_bit_identical_to_adding_tile_by_tile(per_pixel, chunk):
    rng = np.random.default_rng(5)
    grid = TileGrid(height=61, width=47, footprint=(12, 12), stride=(5, 5))
    tiles = [(t.row_off, t.col_off) for t in grid]
    w = tent_window(12, 12)
    k = 1 if per_pixel else 4
    values = (rng.random((len(tiles), k, 12, 12)) if per_pixel else rng.dirichlet(np.ones(k), len(tiles)))
    values = values.astype(np.float32)
    masks = [None if i % 3 else rng.random((12, 12)) > 0.3 for i in range(len(tiles))]
    index = {t: i for i, t in enumerate(tiles)}

    def one_by_one(acc, chunk):
        for t in chunk:
            i = index[t]
            acc.add(t[0], t[1], values[i], w if masks[i] is None else w * masks[i])

    def batched(acc, chunk):
        ids = [index[t] for t in chunk]
        acc.add_batch([t[0] for t in chunk], [t[1] for t in chunk], values[ids], w, [masks[i] for i in ids])

    expected = _streamed(lambda: RowBandAccumulator(47, k, 61), tiles, one_by_one)
    def chunked():
        acc = RowBandAccumulator(47, k, 61)
        acc.BATCH_CHUNK = chunk  # tiles weighted at once
        return acc

    got = _streamed(chunked, tiles, batched)
    assert [f for f, _, _ in got] == [f for f, _, _ in expected]
    for (_, p, c), (_, q, d) in zip(got, expected):
        assert np.array_equal(c, d)
        assert p.tobytes() == q.tobytes()  # bit for bit, not merely close


def test_add_batch_with_a_mask_array_and_with_none():
    w = tent_window(8, 8)
    probs = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    valid = np.ones((2, 8, 8), bool)
    valid[1, :4] = False
    a, b, c = (RowBandAccumulator(16, 2, 8) for _ in range(3))
    a.add_batch([0, 0], [0, 8], probs, w, valid)
    b.add(0, 0, probs[0], w * valid[0])
    b.add(0, 8, probs[1], w * valid[1])
    c.add_batch([0, 0], [0, 8], probs, w)
    [(_, pa, ca)], [(_, pb, cb)], [(_, pc, cc)] = (list(x.pop_rows(8)) for x in (a, b, c))
    assert pa.tobytes() == pb.tobytes() and np.array_equal(ca, cb)
    assert not ca[:4, 8:].any() and cc.all()


def test_accumulator_holds_about_one_tile_of_rows_while_streaming():
    grid = TileGrid(height=400, width=30, footprint=(16, 16), stride=(8, 8))
    acc = RowBandAccumulator(30, 3, 400)
    w = tent_window(16, 16)
    rows = grid.row_offsets
    for tile in grid:
        acc.add_batch([tile.row_off], [tile.col_off], np.full((1, 3), 1 / 3, np.float32), w)
        if tile.grid_col == len(grid.col_offsets) - 1 and tile.grid_row + 1 < len(rows):
            list(acc.pop_rows(rows[tile.grid_row + 1]))
        assert acc._weights.shape[0] <= 2 * 16  # the buffers are reused, not grown row after row
    assert [first for first, _, _ in acc.pop_rows(400)] == [rows[-1]]


def test_read_tiles_gives_what_read_tile_gives(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(1, 3000, (3, 70, 90)).astype(np.uint16)
    data[:, 10:20, 30:45] = 0  # nodata
    path = write_raster(tmp_path / "r.tif", data, nodata=0, descriptions=["B04", "B03", "B02"])
    with RasterSource(path, None, ["B04", "B03", "B02"]) as source:
        area = Area(3, 5, 67, 85)
        offsets = [(0, 0), (0, 8), (0, 16), (0, 60), (5, 25), (20, 50), (20, 40), (55, 70), (60, 76), (64, 80)]
        got_data, got_valid = source.read_tiles(area, offsets, (16, 16), 16)
        for i, (r, c) in enumerate(offsets):
            want_data, want_valid = source.read_tile(area, r, c, (16, 16), 16)
            assert np.array_equal(got_data[i], want_data), (r, c)
            assert np.array_equal(got_valid[i], want_valid), (r, c)
        assert not got_valid[4].all() and not got_valid[-1].all()  # nodata; outside the raster
        # a footprint that needs resampling is read tile by tile, the same way
        got_data, got_valid = source.read_tiles(area, offsets[:3], (32, 32), 16)
        want = source.read_tile(area, 0, 8, (32, 32), 16)
        assert np.array_equal(got_data[1], want[0]) and np.array_equal(got_valid[1], want[1])


@pytest.mark.parametrize("side", [300, 2100])
def test_block_row_writer_writes_the_same_file_whatever_the_bands_of_rows(tmp_path, side):
    from rasterio.transform import from_origin

    import glassbox.core.io.writers as writers

    rng = np.random.default_rng(1)
    height = 150
    values = rng.random((2, height, side)).astype(np.float32)
    profile = dict(driver="GTiff", width=side, height=height, count=2, dtype="float32", crs="EPSG:32633",
                   transform=from_origin(0, 0, 10, 10), **staged_options(side, height, "float32"))
    assert (profile["blockysize"] == writers.STAGED_BLOCK_ROWS) is (side >= writers.COG_MIN_SIZE)
    with rasterio.open(tmp_path / "whole.tif", "w", **profile) as ds:
        ds.write(values)
    with block_cache_limit(2**20):  # small: full blocks are written out while the file is open
        with rasterio.open(tmp_path / "rows.tif", "w", **profile) as ds:
            rows = BlockRowWriter(ds)
            first = 0
            for n in [7, 64, 1, 33, 16, 29]:
                rows.write(first, values[:, first : first + n])
                first += n
            rows.flush()
            assert rows.filled == 0 and first == height
    with rasterio.open(tmp_path / "rows.tif") as ds:
        assert np.array_equal(ds.read(), values)
    if side < writers.COG_MIN_SIZE:  # a final file: the same bytes as written in one go
        assert (tmp_path / "rows.tif").read_bytes() == (tmp_path / "whole.tif").read_bytes()


def test_block_cache_limit_nests_and_restores():
    from rasterio.env import get_gdal_config

    before = get_gdal_config("GDAL_CACHEMAX")
    with block_cache_limit(64 * 2**20):
        assert get_gdal_config("GDAL_CACHEMAX") == 64 * 2**20
        with block_cache_limit(96 * 2**20):
            assert get_gdal_config("GDAL_CACHEMAX") == 96 * 2**20
        assert get_gdal_config("GDAL_CACHEMAX") == 64 * 2**20
        with block_cache_limit(8 * 2**20, override=True):  # e.g. while a COG is written
            assert get_gdal_config("GDAL_CACHEMAX") == 8 * 2**20
        assert get_gdal_config("GDAL_CACHEMAX") == 64 * 2**20
    assert get_gdal_config("GDAL_CACHEMAX") == before


def test_pop_rows_hands_out_pieces_of_a_wide_area_in_order():
    acc = RowBandAccumulator(width=1000, num_classes=2, height=50)
    acc.POP_PIXELS = 7000  # 7 rows per piece
    acc.add_batch([0], [0], np.array([[0.25, 0.75]], np.float32), np.ones((50, 1000), np.float32))
    pieces = list(acc.pop_rows(30))
    assert [first for first, _, _ in pieces] == [0, 7, 14, 21, 28]
    assert sum(p.shape[1] for _, p, _ in pieces) == 30 and acc.base == 30 and acc.held == 20
    assert all(np.allclose(p[1], 0.75) and c.all() for _, p, c in pieces)
    [(first, rest, _), *more] = list(acc.pop_rows(37))
    assert first == 30 and rest.shape[1] == 7 and not more


@pytest.mark.parametrize("need_probabilities", [True, False])
@pytest.mark.parametrize("stride", [12, 5])
def test_painting_lone_tiles_gives_the_blended_classes_and_probabilities(stride, need_probabilities):
    """At stride = tile size classify paints the tiles that overlap no other (all but the flush
    last row and column) instead of blending them: same classes, probabilities equal up to the
    rounding of the weighted mean, same nodata, in the same row pieces; at a smaller stride
    nothing is painted."""
    from glassbox.core.classify import _add_tiles, _finished_rows
    from glassbox.core.tiles.blending import PaintedTiles, lone_offsets

    rng = np.random.default_rng(11)
    grid = TileGrid(height=61, width=47, footprint=(12, 12), stride=(stride, stride))
    tiles = list(grid)
    w = tent_window(12, 12)
    k = 5
    values = rng.dirichlet(np.ones(k), len(tiles)).astype(np.float32)
    masks = [None if i % 4 else rng.random((12, 12)) > 0.3 for i in range(len(tiles))]
    lone_rows, lone_cols = lone_offsets(grid.row_offsets, 12), lone_offsets(grid.col_offsets, 12)
    lone = np.array([lone_rows[t.grid_row] & lone_cols[t.grid_col] for t in tiles])
    assert lone.any() == (stride == 12) and not lone.all()
    assert not lone_rows[-1] and not lone_cols[-1]  # the flush edge tiles overlap their neighbours

    blended = RowBandAccumulator(47, k, 61)
    blended.add_batch([t.row_off for t in tiles], [t.col_off for t in tiles], values, w, masks)
    expected = [(f, p.copy(), c.copy()) for f, p, c in blended.pop_rows(61)]

    acc, painted = RowBandAccumulator(47, k, 61), PaintedTiles(47, k, 61)
    got = []
    for start in range(0, len(tiles), 9):  # in bands, popping the rows no later tile reaches
        part = tiles[start : start + 9]
        _add_tiles(acc, painted, np.array([t.row_off for t in part]), np.array([t.col_off for t in part]),
                   values[start : start + 9], w, masks[start : start + 9], lone[start : start + 9])
        finished = tiles[start + 9].row_off if start + 9 < len(tiles) else 61
        got += [(f, None if p is None else p.copy(), c.copy(), l.copy())
                for f, p, c, l in _finished_rows(acc, painted, finished, need_probabilities)]
    got_rows = np.concatenate([c for _, _, c, _ in got])
    assert np.array_equal(got_rows, np.concatenate([c for _, _, c in expected]))
    labels = np.concatenate([l for _, _, _, l in got])
    expected_probs = np.concatenate([p for _, p, _ in expected], axis=1)
    covered = got_rows
    assert np.array_equal(labels[covered], np.argmax(expected_probs, axis=0)[covered])
    if need_probabilities:
        probs = np.concatenate([p for _, p, _, _ in got], axis=1)
        np.testing.assert_allclose(probs[:, covered], expected_probs[:, covered], rtol=1e-6, atol=1e-7)
