"""Bag reader: samples match the stored arrays, determinism, selections, chunks, pickling, JPEG decoding."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from msamil.cache.bags import Bag, BagReader
from msamil.config import SCALES
from msamil.errors import SlideError

P = 8
COUNTS = {"20x": 50, "10x": 20, "5x": 6}


def _write_cache(path: Path, encoding: str = "raw", complete: bool = True,
                 chunks: tuple | None = (1, P, P, 3)) -> dict[str, np.ndarray]:
    """A hand-made cache file (no slide needed) with distinct patches."""
    imgs = {}
    with h5py.File(path, "w") as f:
        for k, s in enumerate(SCALES):
            n = COUNTS[s]
            g = f.create_group(s)
            rng = np.random.default_rng(k)
            # smooth patches (a colour per patch plus a ramp) so JPEG reproduces them closely
            colour = rng.integers(30, 200, size=(n, 1, 1, 3))
            ramp = np.arange(P)[None, :, None, None] * 3
            arr = (colour + ramp + np.zeros((1, 1, P, 1), int)).astype(np.uint8)
            imgs[s] = arr
            g.create_dataset("coords", data=np.stack([np.arange(n) * 10, np.full(n, k)], 1).astype(np.int64))
            g.create_dataset("parent", data=np.full(n, -1, np.int64))
            g.create_dataset("tissue_frac", data=np.ones(n, np.float32))
            if encoding == "jpeg":
                d = g.create_dataset("imgs", shape=(n,), dtype=h5py.vlen_dtype(np.uint8))
                for i in range(n):
                    d[i] = cv2.imencode(".jpg", cv2.cvtColor(arr[i], cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, 100])[1].reshape(-1)
            else:
                g.create_dataset("imgs", data=arr, chunks=chunks)
            g.attrs["encoding"] = encoding
        f.attrs.update({"slide": "hand", "width": 1000, "height": 500, "patch_px": P, "encoding": encoding})
        if complete:
            f.attrs["complete"] = True
    return imgs


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "hand.h5"
    return path, _write_cache(path)


def _check_bag(bag: Bag, imgs: dict[str, np.ndarray], path: Path) -> None:
    assert bag.imgs.dtype == np.uint8 and bag.imgs.shape == (len(bag), P, P, 3)
    assert (bag.width, bag.height) == (1000, 500)
    with h5py.File(path, "r") as f:
        for j in range(len(bag)):
            s = SCALES[bag.scale_idx[j]]
            np.testing.assert_array_equal(bag.imgs[j], imgs[s][bag.index[j]])
            np.testing.assert_array_equal(bag.coords[j], f[s]["coords"][bag.index[j]])


def test_sample_matches_stored(cache) -> None:
    path, imgs = cache
    reader = BagReader(path)
    assert len(reader) == sum(COUNTS.values())
    bag = reader.sample(30, np.random.default_rng(0))
    assert len(bag) == 30
    assert len({(int(a), int(b)) for a, b in zip(bag.scale_idx, bag.index, strict=True)}) == 30  # distinct
    _check_bag(bag, imgs, path)


def test_sample_deterministic(cache) -> None:
    path, _ = cache
    reader = BagReader(path)
    a, b = reader.sample(20, np.random.default_rng(7)), reader.sample(20, np.random.default_rng(7))
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.scale_idx, b.scale_idx)
    np.testing.assert_array_equal(a.imgs, b.imgs)
    c = reader.sample(20, np.random.default_rng(8))
    assert not (np.array_equal(a.index, c.index) and np.array_equal(a.scale_idx, c.scale_idx))


def test_sample_is_uniform_over_union(cache) -> None:
    path, _ = cache
    reader = BagReader(path)
    rng = np.random.default_rng(1)
    hits = np.zeros(3)
    for _ in range(300):
        hits += np.bincount(reader.sample(10, rng).scale_idx, minlength=3)
    share = hits / hits.sum()
    expected = np.array([COUNTS[s] for s in SCALES]) / sum(COUNTS.values())
    np.testing.assert_allclose(share, expected, atol=0.04)


def test_fewer_than_n_returns_all(cache) -> None:
    path, imgs = cache
    bag = BagReader(path, scales=["5x"]).sample(100, 0)
    assert len(bag) == COUNTS["5x"] and set(bag.scale_idx.tolist()) == {2}
    np.testing.assert_array_equal(bag.index, np.arange(COUNTS["5x"]))
    _check_bag(bag, imgs, path)


def test_indices_restrict_selection(cache) -> None:
    path, imgs = cache
    sel = {"20x": np.array([40, 3, 7, 8, 9]), "10x": np.array([19])}
    reader = BagReader(path, indices=sel)
    assert reader.scales == ["20x", "10x"] and reader.counts() == {"20x": 5, "10x": 1}
    bag = reader.sample(50, 0)
    assert sorted(bag.index[bag.scale_idx == 0].tolist()) == [3, 7, 8, 9, 40]
    assert bag.index[bag.scale_idx == 1].tolist() == [19]
    _check_bag(bag, imgs, path)
    with pytest.raises(ValueError, match="out of range"):
        BagReader(path, indices={"20x": np.array([50])})
    with pytest.raises(ValueError, match="unknown scales"):
        BagReader(path, scales=["40x"])


def test_chunks_cover_everything_once(cache) -> None:
    path, imgs = cache
    reader = BagReader(path)
    bags = list(reader.chunks(17))
    assert [len(b) for b in bags] == [17, 17, 17, 17, 8]
    keys = [(int(s), int(i)) for b in bags for s, i in zip(b.scale_idx, b.index, strict=True)]
    assert keys == [(k, i) for k, s in enumerate(SCALES) for i in range(COUNTS[s])]
    for b in bags:
        _check_bag(b, imgs, path)


def test_pickle_reopens(cache) -> None:
    path, imgs = cache
    reader = BagReader(path)
    reader.sample(5, 0)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._h5 is None
    _check_bag(clone.sample(10, 3), imgs, path)
    reader.close()
    clone.close()


def test_jpeg_cache_decodes(tmp_path: Path) -> None:
    path = tmp_path / "jpeg.h5"
    imgs = _write_cache(path, encoding="jpeg")
    bag = BagReader(path).sample(15, 2)
    assert bag.imgs.shape == (15, P, P, 3)
    for j in range(len(bag)):
        ref = imgs[SCALES[bag.scale_idx[j]]][bag.index[j]].astype(int)
        assert np.abs(bag.imgs[j].astype(int) - ref).mean() < 3


def test_other_layouts_read_by_slices(tmp_path: Path) -> None:
    """Files not written one patch per chunk (contiguous, or compressed chunks) take the slice-read path."""
    path = tmp_path / "contiguous.h5"
    imgs = _write_cache(path, chunks=None)
    reader = BagReader(path)
    assert not any(reader._whole_chunks.values())
    _check_bag(reader.sample(40, 5), imgs, path)
    for bag in reader.chunks(33):
        _check_bag(bag, imgs, path)


def test_incomplete_cache_rejected(tmp_path: Path) -> None:
    path = tmp_path / "partial.h5"
    _write_cache(path, complete=False)
    with pytest.raises(SlideError, match="incomplete"):
        BagReader(path)


def test_reader_on_built_cache(tmp_path: Path) -> None:
    """End to end with a real slide: bag patches equal the cache's stored arrays."""
    from cache_fixtures import make_pair

    from msamil.cache.writer import build_cache

    v = make_pair(tmp_path / "slides", width_um=600.0, height_um=400.0)["s20"]
    out = tmp_path / "s20.h5"
    build_cache(v["path"], "s20", v["mask"], out, mpp=0.5, mpp_20x=0.5, patch_px=32,
                tissue_min={"20x": 0.5, "10x": 0.25, "5x": 0.1})
    bag = BagReader(out).sample(40, 0)
    with h5py.File(out, "r") as f:
        for j in range(len(bag)):
            s = SCALES[bag.scale_idx[j]]
            np.testing.assert_array_equal(bag.imgs[j], f[s]["imgs"][bag.index[j]])
            np.testing.assert_array_equal(bag.coords[j], f[s]["coords"][bag.index[j]])


def test_balanced_shares_fill_evenly_within_what_each_scale_has():
    from msamil.cache.bags import balanced_shares

    assert balanced_shares([100, 40, 20], 48).tolist() == [16, 16, 16]
    assert balanced_shares([100, 40, 10], 48).tolist() == [19, 19, 10]
    assert balanced_shares([100, 40, 3], 48).tolist() == [23, 22, 3]
    assert balanced_shares([5, 0, 2], 48).tolist() == [5, 0, 2]
    assert balanced_shares([100, 40, 10], 7).sum() == 7
