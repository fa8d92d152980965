"""The fault suite, downloads (issue 16): no splice, no downgrade, no leak, no escape; a server on 127.0.0.1.

Listed with the other faults in docs/CONTRACT.md ("Faults").
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import zipfile
from pathlib import Path

import pytest
from http_fixtures import openssl_available, serve

from msamil.datasets.download import MANIFEST, DownloadError, extract, fetch_s3, fetch_source, fetch_url
from msamil.errors import ConfigError

OLD, NEW = bytes(range(256)) * 400, bytes(reversed(range(256))) * 600  # 102,400 and 153,600 bytes
SECRET = "X-Amz-Signature=TOPSECRET"


def _cfg(srv, *paths: str, **entry) -> dict:
    return {"source": "url", "classes": ["a", "b"], "allow_http": True,
            "urls": [{"url": srv.url(p), **entry} for p in paths]}


def _fetch(srv, dest: Path, path: str = "/f.bin", **kw) -> Path:
    return fetch_url(srv.url(path), dest, allow_http=True, retries=kw.pop("retries", 0), timeout=5, backoff=0, **kw)


def test_stale_part_without_a_validator_restarts_from_zero(tmp_path):
    """Row 7: a stale .part used to be resumed with a bare Range header: 150,000 B spliced for a 100,000 B file."""
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(NEW[:50_000])  # left by some earlier job, for another version
    with serve({"/f.bin": OLD}) as srv:
        _fetch(srv, dest)
        assert srv.requests[0][1:3] == (None, None)  # asked for the whole file
    assert dest.read_bytes() == OLD


def test_file_changed_on_the_server_between_attempts(tmp_path):
    """The part has a validator, but the server's file changed: If-Range gets the whole new file, not a tail."""
    dest = tmp_path / "f.bin"
    with serve({"/f.bin": OLD}) as srv:
        srv.cut_once.add("/f.bin")
        with pytest.raises(DownloadError, match="rerun to resume"):
            _fetch(srv, dest)
        srv.files["/f.bin"] = NEW
        _fetch(srv, dest)
        assert srv.requests[-1][1] == f"bytes={len(OLD) // 2}-" and srv.requests[-1][2].startswith('"')
    assert dest.read_bytes() == NEW


@pytest.mark.parametrize("misbehaviour", ["no_validator", "wrong_range"])
def test_servers_that_cannot_resume_safely_get_a_restart(tmp_path, misbehaviour):
    dest = tmp_path / "f.bin"
    with serve({"/f.bin": OLD}) as srv:
        getattr(srv, misbehaviour).add("/f.bin")
        srv.cut_once.add("/f.bin")
        _fetch(srv, dest, retries=1)
        ranges = [r[1] for r in srv.requests]
    assert dest.read_bytes() == OLD
    # no validator: the retry never asks for a range; a lying Content-Range: asked, refused, whole file again
    assert ranges == ([None, None] if misbehaviour == "no_validator" else [None, f"bytes={len(OLD) // 2}-", None])


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/f.bin", "file:///etc/hostname", "ftp://example.org/f"])
def test_only_https_unless_the_dataset_opts_in(tmp_path, url):
    cfg = {"source": "url", "classes": ["a", "b"], "urls": [{"url": url}]}
    with pytest.raises(ConfigError, match=r"urls\[0\]: .*(plain http|only https:// URLs are fetched)"):
        fetch_source("x", cfg, tmp_path / "root", str(tmp_path / "m.json"))
    assert not (tmp_path / "root" / "f.bin").exists() and not (tmp_path / "root" / "hostname").exists()


def test_redirect_to_plain_http_is_refused(tmp_path):
    with serve({"/f.bin": OLD}) as srv:
        srv.redirects["/go"] = srv.url("/f.bin") + "?token=abc"
        with pytest.raises(DownloadError, match=r"redirects to http://127\.0\.0\.1:\d+/f\.bin\?\*\*\*; refused"):
            fetch_url(srv.url("/go"), tmp_path / "f.bin", allow_http=False, retries=0, timeout=5)


@pytest.mark.skipif(not openssl_available(), reason="needs the openssl CLI for a throwaway certificate")
def test_https_download_with_a_trusted_certificate(tmp_path, monkeypatch):
    with serve({"/f.bin": OLD}, tls_dir=tmp_path) as srv:
        monkeypatch.setenv("SSL_CERT_FILE", str(srv.cert))
        dest = fetch_url(srv.url("/f.bin"), tmp_path / "f.bin", hashlib.sha256(OLD).hexdigest(), retries=0,
                         timeout=5)
    assert dest.read_bytes() == OLD


def test_secrets_never_reach_messages_or_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with serve({"/f.bin": OLD}) as srv:
        url = srv.url("/missing.bin").replace("://", "://alice:hunter2@") + f"?{SECRET}"
        with pytest.raises(DownloadError) as err:
            fetch_url(url, tmp_path / "m.bin", allow_http=True, retries=0, timeout=5)
        good = srv.url("/f.bin").replace("://", "://alice:hunter2@") + f"?{SECRET}"
        fetch_url(good, tmp_path / "f.bin", allow_http=True, retries=0, timeout=5)  # no sha256: warns
        assert srv.requests[-1][3] == "Basic YWxpY2U6aHVudGVyMg=="  # user info sent as a header instead
    text = str(err.value) + "\n".join(r.getMessage() for r in caplog.records)
    assert "HTTP 404" in str(err.value) and "://***@127.0.0.1" in str(err.value) and "?***" in str(err.value)
    for secret in ("TOPSECRET", "hunter2", "alice"):
        assert secret not in text


def test_recorded_sha256_is_checked_on_every_later_use(tmp_path):
    root = tmp_path / "root"
    with serve({"/f.bin": OLD}) as srv:
        fetch_source("x", _cfg(srv, "/f.bin"), root, str(tmp_path / "m.json"))  # no sha256 in the config
        recorded = json.loads((root / MANIFEST).read_text())["f.bin"]
        assert recorded == hashlib.sha256(OLD).hexdigest()
        assert json.loads((tmp_path / "m.json").read_text())["files"] == {"f.bin": recorded}
        (root / "f.bin").write_bytes(OLD[:-1] + b"\0")  # bit rot, or someone edited it
        with pytest.raises(DownloadError, match=r"f\.bin changed since its first download .* delete it and rerun"):
            fetch_source("x", _cfg(srv, "/f.bin"), root, str(tmp_path / "m.json"))
        (root / "f.bin").unlink()
        srv.files["/f.bin"] = NEW  # the server now sends something else
        with pytest.raises(DownloadError, match="the server now sends other content than at the first download"):
            fetch_source("x", _cfg(srv, "/f.bin"), root, str(tmp_path / "m.json"))
        assert not (root / "f.bin").exists() and not (root / "f.bin.part").exists()


class _Bucket:
    """The two calls fetch_s3 makes of a boto3 S3 client, over an in-memory bucket."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get_paginator(self, name):
        objects = self.objects

        class _Pages:
            def paginate(self, Bucket, Prefix):  # noqa: N803 (boto3's names)
                yield {"Contents": [{"Key": k, "Size": len(v)} for k, v in objects.items() if k.startswith(Prefix)]}

        return _Pages()

    def download_file(self, bucket, key, filename):
        Path(filename).write_bytes(self.objects[key])


def test_s3_key_that_escapes_the_dataset_folder_is_refused(tmp_path):
    bucket = _Bucket({"data/ok.tif": b"1", "data/../../../outside.txt": b"2"})
    root = tmp_path / "a" / "b" / "root"
    with pytest.raises(DownloadError, match=r"key '\.\./\.\./\.\./outside\.txt' would be written outside"):
        fetch_s3("bucket/data", root, client=bucket)
    assert not list(tmp_path.rglob("outside.txt"))


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_member_that_escapes_is_refused(tmp_path, kind):
    into = tmp_path / "a" / "root"
    into.mkdir(parents=True)
    archive = into / f"pack.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("../../evil.txt", "x")
    else:
        with tarfile.open(archive, "w") as tf:
            info = tarfile.TarInfo("../../evil.txt")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DownloadError, match=r"'\.\./\.\./evil\.txt' would be written outside"):
        extract(archive, into)
    assert not list(tmp_path.rglob("evil.txt")) and not (into / f".{archive.name}.extracted").exists()
