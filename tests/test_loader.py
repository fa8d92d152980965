"""The training data path in parallel: same seed -> the same bags whatever the worker count, and the same bags a
plain sequential loop (BagReader.sample + augment_bag) gives; JPEG patches decoded on threads or by torchvision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cache_fixtures import make_pair

from msamil.cache.bags import BagReader
from msamil.cache.writer import build_cache
from msamil.training.data import SlideData, augment_bag
from msamil.training.loader import BagLoader, BagRequest, decode_jpeg_batch, loader_workers

pytestmark = pytest.mark.xdist_group("loader")
KW = {"mpp_20x": 0.5, "patch_px": 64, "tissue_min": {"20x": 0.5, "10x": 0.25, "5x": 0.1}}


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Three slides, each cached raw and as JPEG."""
    tmp = tmp_path_factory.mktemp("loader")
    out: dict[str, list[Path]] = {"raw": [], "jpeg": []}
    for i in range(3):
        s = make_pair(tmp / f"src{i}", width_um=900.0, height_um=700.0, seed=i)["s20"]
        for enc in out:
            path = tmp / enc / f"s{i}.h5"
            path.parent.mkdir(exist_ok=True)
            build_cache(s["path"], f"s{i}", s["mask"], path, mpp=0.5, encoding=enc, jpeg_quality=90, **KW)
            out[enc].append(path)
    return out


def _requests(n_epochs: int = 2) -> list[BagRequest]:
    order = ["s1", "s0", "s2", "s2", "s0"] * n_epochs
    return [BagRequest(s, n=24, balanced=k % 2 == 0, augment=k % 3 != 0) for k, s in enumerate(order)]


def _sequential(paths: list[Path], reqs: list[BagRequest], seed: int) -> list:
    """What the trainer's plain loop does: sample then augment, one slide after the other."""
    rng = np.random.default_rng(seed)
    data = SlideData(paths, None, ["20x", "10x", "5x"])
    bags = []
    for r in reqs:
        with data.open(r.slide) as reader:
            bag = reader.sample(r.n, rng, balanced=r.balanced)
        if r.augment:
            bag.imgs = augment_bag(bag.imgs, rng)
        bags.append(bag)
    return bags


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_same_seed_same_bags_whatever_the_worker_count(caches: dict, encoding: str) -> None:
    paths, reqs = caches[encoding], _requests()
    reference = _sequential(paths, reqs, seed=5)
    for workers, prefetch in ((0, 0), (1, 1), (3, 2), (8, 4)):
        rng = np.random.default_rng(5)
        with BagLoader(SlideData(paths, None, ["20x", "10x", "5x"]), workers, prefetch) as loader:
            got = list(loader.bags(reqs, rng))
        assert len(got) == len(reference)
        for a, b in zip(got, reference, strict=True):
            assert np.array_equal(a.index, b.index) and np.array_equal(a.scale_idx, b.scale_idx)
            assert np.array_equal(a.imgs, b.imgs), (encoding, workers)
        # the caller's RNG ends where the sequential loop leaves it (what follows draws the same)
        assert rng.random() == _end_state(paths, reqs, 5).random()
    with BagLoader(SlideData(paths, None, ["20x", "10x", "5x"]), 2) as loader:
        other = list(loader.bags(reqs, np.random.default_rng(6)))
    assert not all(np.array_equal(a.index, b.index) for a, b in zip(other, reference, strict=True))


def _end_state(paths: list[Path], reqs: list[BagRequest], seed: int) -> np.random.Generator:
    rng = np.random.default_rng(seed)
    data = SlideData(paths, None, ["20x", "10x", "5x"])
    for r in reqs:
        with data.open(r.slide) as reader:
            bag = reader.sample(r.n, rng, balanced=r.balanced)
        if r.augment:
            augment_bag(bag.imgs, rng)
    return rng


def test_threaded_decoding_equals_plain_decoding(caches: dict) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with BagReader(caches["jpeg"][0]) as plain, BagReader(caches["jpeg"][0]) as threaded, \
            ThreadPoolExecutor(4) as pool:
        threaded.executor = pool
        for scale in ("20x", "5x"):
            idx = np.arange(len(plain.selected[scale]))
            assert np.array_equal(plain.read(scale, idx), threaded.read(scale, idx))


def test_torchvision_decoder_matches_opencv(caches: dict) -> None:
    """The GPU decoding path (decode_jpeg_batch) run on the CPU: same layout, same pixels up to IDCT rounding."""
    with BagReader(caches["jpeg"][1]) as reader:
        idx = np.arange(min(16, len(reader.selected["20x"])))
        ref = reader.read("20x", idx)
        got = decode_jpeg_batch(reader.read_encoded("20x", idx), device="cpu").numpy()
    assert got.shape == ref.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 1.0


def test_workers_follow_the_rules_threads() -> None:
    assert loader_workers(8, "cuda") == 8 and loader_workers(1, "cuda") == 1
    assert loader_workers(1, "cpu") == 0 and loader_workers(2, "cpu") == 0 and loader_workers(8, "cpu") == 4
