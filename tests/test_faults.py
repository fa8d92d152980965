"""The fault suite (issue 16): every fault a run can meet, with what the user sees and proof nothing was lost.

Each test reproduces one fault (a kill, a damaged file, bad input, a full disk, a hostile server) and asserts the
user-visible message and that nothing was lost or silently changed. docs/CONTRACT.md ("Faults") lists them,
fault -> expected behaviour; the download faults are in test_faults_download.py.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import slide_fixtures as sf
import torch
from fault_fixtures import DISK_FULL, RunsCode, corrupt_tissue_tile, write_corrupt_tile_slide
from test_train import _run, make_dataset, tiny_config

from msamil.cache.access import CacheError
from msamil.cache.bags import BagReader
from msamil.errors import ConfigError, MsamilError
from msamil.slides.inspection import inspect_dataset
from msamil.training.trainer import RESUME_DIR
from msamil.util.atomic import DiskFullError, atomic_path, stale_temporaries, write_tsv

REPO = Path(__file__).resolve().parents[1]
DECLARED = ("predictions.tsv", "metrics.json", "efficiency.json", "best.pt", "last.pt", "train_log.tsv",
            "attention.h5")  # rules/train.smk's outputs: Snakemake deletes them before a rerun
EPOCHS, BEST = 5, 3  # with seed 2 and lr 0.05 the uninterrupted run's best epoch is 3: kills land around it
# (at the default lr the tiny run improves every epoch, so its best is the last one and no kill lands after it)
DS = {"source": "local", "classes": ["benign", "malignant"], "default_mpp": None}
TISSUE = {"seg_mpp": 4.0, "smooth_um": 8.0, "close_um": 32.0, "min_fragment_area_um2": 1000.0,
          "min_tissue_area_um2": 1000.0, "min_hole_area_um2": 500.0}  # small test slides (as in test_inspect)


def _config() -> dict:
    cfg = tiny_config(epochs=EPOCHS, lr=0.05)
    cfg["seed"] = 2
    return cfg


def _snakemake_deletes_outputs(run: Path) -> None:
    for name in DECLARED:
        (run / name).unlink(missing_ok=True)


def _same_results(a: Path, b: Path) -> None:
    for name in ("metrics.json", "predictions.tsv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    metrics = _run(_config(), data, out)
    assert metrics["best_epoch"] == BEST, "fixture drifted: pick EPOCHS/BEST so kills land around the best epoch"
    return out


# ------------------------------------------------------------------------------------ training and checkpoints
@pytest.mark.xdist_group("faults_resume")  # one worker computes the uninterrupted reference once
@pytest.mark.parametrize("killed_after", [BEST - 1, BEST, BEST + 1], ids=["before-best", "at-best", "after-best"])
def test_kill_at_any_epoch_resumes_to_identical_results(data, reference, tmp_path, killed_after):
    """Row 1: a kill after the best epoch used to end every rerun in FileNotFoundError: best.pt."""
    assert _run(_config(), data, tmp_path, stop_after_epoch=killed_after) is None
    _snakemake_deletes_outputs(tmp_path)
    _run(_config(), data, tmp_path)
    _same_results(reference, tmp_path)
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == BEST
    assert not (tmp_path / RESUME_DIR / "last.pt").exists()  # finished: the next rerun retrains


@pytest.mark.xdist_group("faults_resume")  # one worker computes the uninterrupted reference once
def test_truncated_checkpoints_are_set_aside_and_the_run_finishes(data, reference, tmp_path, caplog):
    """Row 2: a truncated last.pt (and its mirror) used to fail every rerun with a zip error naming no file."""
    _run(_config(), data, tmp_path, stop_after_epoch=2)
    mirror = tmp_path / RESUME_DIR / "last.pt"
    for path in (tmp_path / "last.pt", mirror):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _run(_config(), data, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for path in (tmp_path / "last.pt", mirror):
        assert any(m.startswith(f"checkpoint {path} is damaged") and m.endswith(f"moved to {path}.damaged and "
                                                                                  f"not used") for m in warnings)
        assert Path(f"{path}.damaged").exists()
    _same_results(reference, tmp_path)  # started fresh, so the same results as a run never interrupted


@pytest.mark.xdist_group("faults_resume")  # one worker computes the uninterrupted reference once
def test_mirror_is_a_checksummed_copy_and_a_flipped_bit_is_caught(data, reference, tmp_path, caplog):
    _run(_config(), data, tmp_path, stop_after_epoch=2)
    mirror = tmp_path / RESUME_DIR / "last.pt"
    assert mirror.stat().st_nlink == 1 and mirror.stat().st_ino != (tmp_path / "last.pt").stat().st_ino
    assert mirror.read_bytes() == (tmp_path / "last.pt").read_bytes()
    _snakemake_deletes_outputs(tmp_path)
    raw = bytearray(mirror.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit in a tensor: torch.load would not notice
    mirror.write_bytes(bytes(raw))
    _run(_config(), data, tmp_path)
    assert any("sha256 does not match last.pt.sha256" in r.getMessage() for r in caplog.records)
    _same_results(reference, tmp_path)


@pytest.mark.xdist_group("faults_resume")  # one worker computes the uninterrupted reference once
def test_kill_during_inference_reruns_inference_only(data, reference, tmp_path, monkeypatch):
    from msamil.training import trainer

    def killed(self):
        raise KeyboardInterrupt("killed during inference")

    with monkeypatch.context() as patch:
        patch.setattr(trainer.Trainer, "infer", killed)
        with pytest.raises(KeyboardInterrupt):
            _run(_config(), data, tmp_path)
    _snakemake_deletes_outputs(tmp_path)
    _run(_config(), data, tmp_path)
    assert all((tmp_path / name).exists() for name in DECLARED)  # last.pt and train_log.tsv too
    assert len(pd.read_csv(tmp_path / "train_log.tsv", sep="\t")) == EPOCHS
    _same_results(reference, tmp_path)


def test_a_checkpoint_that_would_run_code_is_refused(data, tmp_path, caplog):
    marker = tmp_path / "pwned"
    tmp_path.joinpath(RESUME_DIR).mkdir()
    torch.save({"model": RunsCode(marker)}, tmp_path / "last.pt")
    _run(tiny_config(epochs=1), data, tmp_path)
    assert not marker.exists()
    assert any("last.pt is damaged (UnpicklingError" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "metrics.json").exists()


def test_a_lesion_model_that_would_run_code_is_refused(tmp_path):
    from msamil.lesion.unetpp import load_model

    marker = tmp_path / "pwned"
    with open(tmp_path / "unetpp.pt", "wb") as fh:
        pickle.dump({"state_dict": RunsCode(marker)}, fh, protocol=2)
    with pytest.raises(MsamilError, match=r"unetpp.pt is unreadable .*delete it and rerun"):
        load_model(tmp_path / "unetpp.pt")
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    import ast

    calls = []
    for path in (REPO / "msamil").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                flags = [k.value.value for k in node.keywords if k.arg == "weights_only"
                         and isinstance(k.value, ast.Constant)]
                calls.append((path.name, node.lineno, flags == [True]))
    assert len(calls) >= 3 and all(ok for *_, ok in calls), calls


@pytest.mark.xdist_group("faults_resume")  # one worker computes the uninterrupted reference once
def test_real_kill_9_mid_epoch_then_rerun(data, reference, tmp_path):
    """A real SIGKILL of a training process (not a polite stop), somewhere inside epoch 3."""
    script = ("import sys; sys.path[:0] = [{tests!r}, {repo!r}]\n"
              "from test_faults import _config; from test_train import _run; import pickle\n"
              "_run(_config(), pickle.loads(bytes.fromhex({data!r})), {out!r})\n").format(
        tests=str(REPO / "tests"), repo=str(REPO), data=pickle.dumps(data).hex(), out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = tmp_path / "train_log.tsv", time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the training process ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _snakemake_deletes_outputs(tmp_path)
    _run(_config(), data, tmp_path)
    _same_results(reference, tmp_path)


def test_baseline_rerun_after_a_kill_gives_the_same_results(tmp_path):
    """Baselines have no resume: a killed job reruns from scratch, leaving no stale file and the same numbers."""
    from baseline_fixtures import fake_dataset
    from baseline_fixtures import tiny_config as baseline_config

    from msamil.baselines.run import run_baseline

    ds = fake_dataset(tmp_path / "ds")
    kw = {"config": baseline_config(ds["classes"]), "dataset": "fake", "method": "icmil_abmil", "fold": 0,
          "slides_tsv": ds["slides_tsv"], "folds_tsv": ds["folds_tsv"], "cache_paths": ds["caches"],
          "device": "cpu"}
    run_baseline(run_dir=tmp_path / "a", **kw)
    killed = tmp_path / "b"
    killed.mkdir()
    (killed / ".best.pt.abcd1234.pt").write_bytes(b"half a checkpoint")  # a write cut short by the kill
    (killed / "train_log.tsv").write_text("stale\n")
    run_baseline(run_dir=killed, **kw)
    _same_results(tmp_path / "a", killed)
    assert not list(killed.glob(".*.pt")) and (killed / "best.pt").exists()
    assert set(torch.load(killed / "best.pt", weights_only=True)) >= {"head", "embedder", "best_epoch"}


# ----------------------------------------------------------------------------------------------------- config
def _validate(overrides: dict) -> None:
    from snakemake.utils import validate

    from tests.workflow_helpers import deep_update, load_default_config

    validate(deep_update(load_default_config(), overrides), str(REPO / "workflow/schemas/config.schema.yaml"))


@pytest.mark.parametrize(("overrides", "named"), [
    ({"methods": {"msamil": {"kind": "msamil", "train": {"epoch": 1}}}}, "'epoch' was unexpected"),
    ({"methods": {"msamil": {"kind": "msamil", "train": {"lr": "fast"}}}}, "'fast' is not of type 'number'"),
    ({"methods": {"msamil": {"kind": "msamil", "model": {"dimm": 8}}}}, "'dimm' was unexpected"),
    ({"methods": {"a.b": {"kind": "msamil"}}}, "'a.b' does not match '^[A-Za-z0-9_]+$'"),
    ({"dataset_config": {"my/set": {"source": "local", "classes": ["a", "b"]}}}, "'my/set' does not match"),
    ({"dataset_config": {"x": {"source": "url", "classes": ["a", "b"], "urls": [{"url": "u", "sha": "1"}]}}},
     "'sha' was unexpected"),
], ids=["typo-in-method-train", "wrong-type-in-method-train", "typo-in-method-model", "method-name-with-dot",
        "dataset-name-with-slash", "typo-in-url-entry"])
def test_config_faults_are_named_at_start_up(overrides, named):
    """Row 5: typos inside methods.<m>.train used to be accepted and silently ignored."""
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError) as err:
        _validate(overrides)
    assert named in str(err.value)


def test_method_named_to_escape_results_is_refused(tmp_path):
    """Row 6: a method named ../../../escaped was planned as results/synthetic/runs/../../../escaped/."""
    from tests.workflow_helpers import snakemake, write_config

    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    config = write_config(work, {"methods": {"msamil": {"kind": "msamil"}, "../../../escaped": {"kind": "abmil"}}})
    proc = snakemake(work, config, "-n", "--cores", "1")
    assert proc.returncode != 0
    assert "'../../../escaped' does not match '^[A-Za-z0-9_]+$'" in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("escaped*"))


# ----------------------------------------------------------------------------------------------------- slides
def test_duplicated_slide_id_with_conflicting_labels_is_an_error(tmp_path):
    """Row 3: the last row used to win silently, changing a label."""
    from msamil.datasets.registry import SourceRecord, _apply_slide_table

    table = tmp_path / "overrides.csv"
    table.write_text("slide,label\ns1,benign\ns2,benign\ns1,malignant\n")
    recs = [SourceRecord("s1", "p1", "benign", "a.jpg"), SourceRecord("s2", "p2", "benign", "b.jpg")]
    with pytest.raises(ConfigError, match=r"'s1' \(lines \[2, 4\], labels \['benign', 'malignant'\]\)"):
        _apply_slide_table(recs, str(table), "bcnb")


def test_unsafe_slide_ids_never_name_files(tmp_path):
    from msamil.datasets.registry import safe_id

    assert [safe_id(n) for n in ("..", ".", "...hidden", "a/../b", "")] == ["slide", "slide", "hidden", "a_.._b",
                                                                             "slide"]
    img = sf.tissue_image(320.0, 240.0, 0.5, seed=1)
    good = sf.write_aperio(tmp_path / "good.svs", img, 0.5)
    rows = [{"slide": s, "patient": "p", "label": "benign", "path": str(good)} for s in ("ok", "..", "up/x", ".h")]
    slides, excluded = inspect_dataset(sf.write_table(tmp_path / "t.tsv", rows), DS, tmp_path / "o/s.tsv",
                                       tmp_path / "o/e.tsv", tmp_path / "o/qc", tissue_cfg=TISSUE)
    assert slides["slide"].tolist() == ["ok"]
    assert dict(zip(excluded["slide"], excluded["reason"], strict=True)) == {
        "..": "slide id '..' is a directory reference",
        "up/x": "slide id 'up/x' contains '/' (path separators and control characters are not allowed)",
        ".h": "slide id '.h' starts with a dot (hidden file names are reserved for temporary files)"}
    assert sorted(p.name for p in (tmp_path / "o").rglob("*.png")) == ["ok.png"]


def test_corrupt_tile_inside_tissue_is_excluded_at_inspect(tmp_path):
    """Row 4, first line of defence: the level-0 sample of Slide.verify decodes the bad tile."""
    from msamil.slides.synthetic import write_synthetic_slide

    x, y = write_corrupt_tile_slide(tmp_path / "bad.svs", "bad", width=1536, height=1024)
    write_synthetic_slide(tmp_path / "good.svs", tmp_path / "good.geojson", "good", "benign", 0, width=1536,
                          height=1024)
    rows = [{"slide": s, "patient": s, "label": "benign", "path": str(tmp_path / f"{s}.svs")} for s in ("bad", "good")]
    slides, excluded = inspect_dataset(sf.write_table(tmp_path / "t.tsv", rows), DS, tmp_path / "s.tsv",
                                       tmp_path / "e.tsv", tmp_path / "qc")
    assert slides["slide"].tolist() == ["good"]
    assert excluded["reason"].tolist() == [f"unreadable: corrupt level-0 tile at x={x}, y={y} "
                                           f"(OpenSlide: Premature end of JPEG file)"]


# ------------------------------------------------------------------------------------------------------ caches
@pytest.fixture
def cache(tmp_path) -> Path:
    from test_train import _write_h5_cache

    path = tmp_path / "cache" / "s01.h5"
    path.parent.mkdir()
    _write_h5_cache(path, "s01", 1, np.random.default_rng(0))
    return path


@pytest.mark.parametrize("damage", ["truncated", "unfinished"])
def test_damaged_cache_is_named_with_the_fix_by_every_reader(cache, damage, capsys):
    """Row 8: a truncated cache used to fail downstream with an h5py error that never named the file."""
    from msamil.baselines.sampling import count_patches
    from msamil.cli import main
    from msamil.lesion.sffm import cache_slide_id

    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
        problem = "is unreadable (truncated or corrupt: Unable to synchronously open file (truncated file"
    else:
        with h5py.File(cache, "a") as h5:
            h5.attrs["complete"] = False
        problem = "is incomplete (no complete=True attribute"
    for read in (BagReader, count_patches, cache_slide_id):
        with pytest.raises(CacheError) as err:
            read(cache)
        assert str(err.value).startswith(f"slide 's01': cache file {cache} {problem}")
        assert str(err.value).endswith(f"(fix: delete it ({cache}) and rerun; the cache rule rebuilds it)")
    assert main(["cache-info", str(cache)]) == 1
    assert json.loads(capsys.readouterr().out)["fix"].startswith("delete it")


# ------------------------------------------------------------------------------------------ atomic outputs
def test_killed_write_leaves_a_temp_file_that_the_rerun_removes(tmp_path):
    """Row 9: kill -9 during an HDF5 write left `.syn_003.h5.<random>.h5` behind for good."""
    target = tmp_path / "syn_003.h5"
    script = (f"import sys, time, h5py, numpy as np; sys.path.insert(0, {str(REPO)!r})\n"
              "from msamil.util.atomic import atomic_path\n"
              f"with atomic_path({str(target)!r}) as tmp, h5py.File(tmp, 'w') as f:\n"
              "    f.create_dataset('x', data=np.zeros(1000)); f.flush(); print(tmp, flush=True); time.sleep(60)\n"
              )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    other = tmp_path / ".syn_004.h5.abcd1234.h5"  # another slide's temporary: not ours to remove
    other.write_bytes(b"")
    assert tmp.exists() and stale_temporaries(target) == [tmp] and not target.exists()
    with atomic_path(target) as new, h5py.File(new, "w") as f:
        f.attrs["complete"] = True
    assert not tmp.exists() and other.exists() and target.exists()
    assert oct(target.stat().st_mode & 0o777) != "0o600"


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "table.tsv"
    write_tsv(target, pd.DataFrame({"a": [1]}))
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError("the job failed mid-write")
    assert target.read_text() == "a\n1\n" and not stale_temporaries(target)


def test_enospc_is_reported_as_no_space_left_with_the_path(tmp_path):
    target = tmp_path / "out.tsv"
    with pytest.raises(DiskFullError) as err, atomic_path(target) as tmp, open("/dev/full", "wb") as full:
        tmp.write_text("partial")
        full.write(b"x" * 65536)
        full.flush()
    assert str(err.value).startswith(f"no space left on device while writing {target} (No space left on device)")
    assert err.value.errno == 28 and isinstance(err.value, OSError)
    assert not target.exists() and not stale_temporaries(target)


def test_disk_full_on_a_real_filesystem(tmp_path):
    """Row 10: h5py, torch and pandas each report a full disk in their own words; we say "no space left"."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount to make a small private tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    code = DISK_FULL.format(repo=str(REPO), root=str(mnt))
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=512k tmpfs "$1" && exec "$2" -c '
                           '"$3"', "sh", str(mnt), sys.executable, code], capture_output=True, text=True)
    if proc.returncode != 0 and "mount" in proc.stderr and "DiskFull" not in proc.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr.strip()[-200:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, message in out.items():
        assert message.startswith(f"no space left on device while writing {mnt / name} ("), (name, message)
        assert "LEFT TEMP" not in message


# ---------------------------------------------------------------------------------------------- whole workflow
E2E = {
    "synthetic": {"n_slides": 8, "n_patients": 8, "width": 2048, "height": 1536},
    "splits": {"folds": 2, "val_fraction": 0.25},
    "lesion": {"epochs": 1},
    "model": {"input_px": 32, "dim": 32},
    "train": {"epochs": 1, "bag_size": 16, "micro_batch": 8, "accum_slides": 1, "bn_calib_patches": 32},
    "baselines": {"abmil": {"epochs": 2}},
    "methods": {"msamil": {"kind": "msamil"}, "abmil": {"kind": "abmil"}},
    "report": {"heatmap_slides": 1, "fig2_slides": 1},
}


@pytest.mark.slow
@pytest.mark.xdist_group("e2e")
def test_slide_failing_at_cache_is_excluded_and_every_method_runs(tmp_path):
    """Row 4: one corrupt level-0 JPEG tile inside tissue used to stop all training ("Error in rule cache").

    Inspection now decodes level-0 tiles, so the bad tile is put in after inspect ran (the file keeps its mtime):
    the slide fails at a later per-slide stage (tissue, whose QC overlay of a small slide reads level 0, then
    cache), as one whose bad tile inspection's sample missed would.
    """
    from tests.workflow_helpers import snakemake, write_config

    config = write_config(tmp_path, E2E)
    snakemake(tmp_path, config, "--cores", "2", "results/synthetic/inspect/slides.tsv", check=True)
    bad = "syn_002"
    corrupt_tissue_tile(tmp_path / f"results/synthetic/raw/slides/{bad}.svs")
    proc = snakemake(tmp_path, config, "--cores", "2")  # no --keep-going: one bad slide must not need it
    results = tmp_path / "results/synthetic"
    assert proc.returncode == 0, proc.stderr[-3000:]
    excluded = pd.read_csv(results / "excluded.tsv", sep="\t")
    assert bad in excluded["slide"].tolist()
    reason = excluded.set_index("slide").loc[bad, "reason"]
    assert "corrupt" in reason or "unreadable" in reason
    for method in E2E["methods"]:
        for fold in range(2):
            preds = pd.read_csv(results / f"runs/{method}/fold{fold}/predictions.tsv", sep="\t")
            assert bad not in preds["slide"].tolist()
    assert (tmp_path / "results/tables/main_results.tsv").exists()
