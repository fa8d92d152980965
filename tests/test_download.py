"""The url/local/kaggle/s3 sources, offline: an HTTP server on 127.0.0.1 with Range support that the test starts.

The faults (splices, downgrades, leaks, escapes) are in test_faults.py; here the ordinary behaviour.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from http_fixtures import serve

from msamil.datasets import download
from msamil.datasets.download import DownloadError, fetch_source
from msamil.datasets.download import fetch_url as _fetch_url
from msamil.errors import ConfigError

fetch_url = partial(_fetch_url, allow_http=True)  # the test server is plain http on 127.0.0.1 (opted in)

PAYLOAD = os.urandom(300_000)


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    with serve({"/data.bin": PAYLOAD}) as srv:
        yield srv


def _url(srv: http.server.ThreadingHTTPServer, path: str = "/data.bin") -> str:
    return srv.url(path)


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verified(server, tmp_path: Path) -> None:
    dest = fetch_url(_url(server), tmp_path / "d" / "data.bin", SHA, retries=0, timeout=5)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "d" / "data.bin.part").exists()
    # present and verified: no second transfer
    fetch_url(_url(server), dest, SHA, retries=0, timeout=5)
    assert len(server.requests) == 1


def test_corrupted_byte_is_a_mismatch_and_removed(server, tmp_path: Path) -> None:
    bad = bytearray(PAYLOAD)
    bad[12345] ^= 0xFF
    server.files["/data.bin"] = bytes(bad)
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch_url(_url(server), dest, SHA, retries=0, timeout=5)
    assert not dest.exists()
    assert not dest.with_name("data.bin.part").exists()


def test_interrupted_transfer_resumes_with_range(server, tmp_path: Path) -> None:
    server.cut_once.add("/data.bin")
    dest = fetch_url(_url(server), tmp_path / "data.bin", SHA, retries=2, timeout=5, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert server.requests[0][1] is None
    assert server.requests[1][1:3] == (f"bytes={len(PAYLOAD) // 2}-", server.requests[1][2])
    assert server.requests[1][2].startswith('"')  # If-Range with the ETag of the first response


def test_part_file_from_a_killed_job_is_resumed(server, tmp_path: Path) -> None:
    """A killed job's part (and its validator) is continued by the next job, not downloaded again."""
    dest = tmp_path / "data.bin"
    server.cut_once.add("/data.bin")
    with pytest.raises(DownloadError, match="rerun to resume"):
        fetch_url(_url(server), dest, SHA, retries=0, timeout=5)
    have = dest.with_name("data.bin.part").stat().st_size
    fetch_url(_url(server), dest, SHA, retries=0, timeout=5)
    assert dest.read_bytes() == PAYLOAD and not dest.with_name("data.bin.part.json").exists()
    assert server.requests[-1][1] == f"bytes={have}-"


def test_missing_file_is_a_clear_error(server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_url(_url(server, "/nope"), tmp_path / "x", None, retries=3, timeout=5, backoff=0)
    assert len(server.requests) == 1  # a 404 is not retried


def test_url_source_extracts_archives(server, tmp_path: Path) -> None:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train.csv", "image_id,label\n1,CC\n")
    server.files["/pack.zip"] = buf.getvalue()
    cfg = {"source": "url", "allow_http": True,
           "urls": [{"url": _url(server, "/pack.zip"), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}]}
    root, manifest = tmp_path / "source", tmp_path / "source.json"
    fetch_source("ubc_ocean", cfg, root, str(manifest))
    assert (root / "train.csv").read_text().startswith("image_id")
    assert json.loads(manifest.read_text())["root"] == str(root)


def test_local_source_is_a_symlink(tmp_path: Path) -> None:
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "a.jpg").write_bytes(b"x")
    root = tmp_path / "results" / "raw" / "source"
    fetch_source("bcnb", {"source": "local", "path": str(data)}, root, str(tmp_path / "m.json"))
    assert root.is_symlink() and (root / "a.jpg").exists()
    # rerun (e.g. after the user moved the folder) relinks instead of failing
    fetch_source("bcnb", {"source": "local", "path": str(data)}, root, str(tmp_path / "m.json"))
    with pytest.raises(ConfigError, match="not a directory"):
        fetch_source("bcnb", {"source": "local", "path": str(tmp_path / "nope")}, root, str(tmp_path / "m.json"))


def test_kaggle_without_tool_or_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {"source": "kaggle", "competition": "UBC-OCEAN"}
    monkeypatch.setattr(download.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="not installed"):
        fetch_source("ubc_ocean", cfg, tmp_path / "s", str(tmp_path / "m.json"))
    monkeypatch.setattr(download.shutil, "which", lambda name: "/usr/bin/kaggle")
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))
    with pytest.raises(ConfigError, match=r"kaggle.json"):
        fetch_source("ubc_ocean", cfg, tmp_path / "s", str(tmp_path / "m.json"))


def test_s3_without_any_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_boto(name: str, *args: object, **kwargs: object):
        if name.startswith(("boto3", "botocore")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(download.shutil, "which", lambda name: None)
    monkeypatch.setattr(builtins, "__import__", no_boto)
    with pytest.raises(ConfigError, match="AWS CLI"):
        fetch_source("camelyon16", {"source": "s3", "bucket": "camelyon-dataset/CAMELYON16"},
                     tmp_path / "s", str(tmp_path / "m.json"))


def test_missing_key_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset_config.bcnb.urls"):
        fetch_source("bcnb", {"source": "url"}, tmp_path / "s", str(tmp_path / "m.json"))
