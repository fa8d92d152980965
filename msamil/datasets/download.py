"""Fetch a dataset's files from where the user has them: a local directory, URLs, Kaggle or a public S3 bucket.

Public pathology datasets are tens to hundreds of GB, so a download must survive a dropped connection (HTTP Range
resume from a `.part` file that outlives the job, so a Snakemake retry resumes too), must be verified (sha256; a bad
file is removed rather than silently used) and must never duplicate what the user already has (local = symlink).
Every source writes a manifest whose `root` is the directory the dataset definition scans.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from msamil.errors import ConfigError, MsamilError
from msamil.util.atomic import write_json
from msamil.util.checksum import sha256_file

log = logging.getLogger(__name__)
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2")


class DownloadError(MsamilError):
    """A transfer failed for good, or its content is not what the config promised."""


def _transfer(url: str, part: Path, timeout: float, chunk: int) -> None:
    """Append the rest of `url` to `part`, asking for it with a Range header when part of it is already there."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "msamil-download"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file is already whole
            return
        raise
    with resp:
        if have and resp.status != 206:
            log.info("%s: server ignored the Range request; starting over", url)
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as out, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:40]) as bar:
            while block := resp.read(chunk):
                out.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise http.client.IncompleteRead(b"", total - size)


def fetch_url(url: str, dest: str | os.PathLike[str], sha256: str | None = None, *, retries: int = 5,
              timeout: float = 60.0, backoff: float = 2.0, chunk: int = 1 << 20) -> Path:
    """Download `url` to `dest`, resuming after interruptions, then verify its sha256.

    The partial file is `dest + ".part"`; it stays on disk after a failure so that the next attempt (in this call
    or a later job) continues where the last one stopped. A checksum mismatch removes the file and raises.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (sha256 is None or sha256_file(dest) == sha256.lower()):
        log.info("%s: present and verified", dest)
        return dest
    dest.unlink(missing_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, chunk)
            break
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL in "
                                    f"dataset_config.<dataset>.urls") from exc
            if attempt == retries:
                raise DownloadError(f"{url}: gave up after {retries + 1} attempts ({exc}); rerun to resume "
                                    f"from {part}") from exc
            wait = backoff * 2**attempt
            log.warning("%s: attempt %d failed (%s); resuming in %.0f s", url, attempt + 1, exc, wait)
            time.sleep(wait)
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: sha256 mismatch (expected {sha256.lower()}, got {got}); the file was "
                                f"removed. Rerun to download it again, or fix the sha256 in the config")
    else:
        log.warning("%s: no sha256 in the config, so the file is unverified (sha256 %s)", url, sha256_file(part))
    os.replace(part, dest)
    return dest


def extract(archive: Path, into: Path) -> None:
    """Unpack once (a marker file records it), refusing members that would land outside `into`."""
    marker = into / f".{archive.name}.extracted"
    if marker.exists():
        return
    log.info("extracting %s", archive)
    into_resolved = into.resolve()
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not (into_resolved / name).resolve().is_relative_to(into_resolved):
                    raise DownloadError(f"{archive}: member {name!r} escapes the target directory")
            zf.extractall(into)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(into, filter="data")
    marker.write_text("ok\n")


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVES)


# -------------------------------------------------------------------------------------------------- sources
def link_local(path: str, root: Path) -> dict[str, Any]:
    """Point `root` at the user's directory: the data stay where they are, nothing is copied."""
    target = Path(path).expanduser().resolve()
    if not target.is_dir():
        raise ConfigError(f"local source: {path} is not a directory; set dataset_config.<dataset>.path to the "
                          f"folder that holds the dataset as downloaded")
    if root.is_symlink() or root.is_file():
        root.unlink()
    elif root.is_dir():
        if any(root.iterdir()):
            raise ConfigError(f"{root} exists and is not a link; remove it to use the local source {path}")
        root.rmdir()
    root.parent.mkdir(parents=True, exist_ok=True)
    root.symlink_to(target, target_is_directory=True)
    return {"target": str(target)}


def fetch_urls(entries: list[dict[str, Any]], root: Path, retries: int = 5) -> dict[str, Any]:
    """Download each `{url, sha256, dest}` under root; archives are unpacked next to themselves."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "url" not in entry:
            raise ConfigError(f"dataset_config.<dataset>.urls[{i}] must be a mapping with url, sha256 and "
                              f"optionally dest; got {entry!r}")
        dest_name = entry.get("dest") or PurePosixPath(entry["url"].split("?")[0]).name
        if PurePosixPath(dest_name).is_absolute() or ".." in PurePosixPath(dest_name).parts:
            raise ConfigError(f"urls[{i}].dest must be a relative path inside the dataset folder: {dest_name}")
        dest = fetch_url(entry["url"], root / dest_name, entry.get("sha256"), retries=retries)
        if entry.get("extract", _is_archive(dest.name)):
            extract(dest, dest.parent)
        files[dest_name] = entry.get("sha256") or sha256_file(dest)
    return {"files": files}


def _kaggle_credentials() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").exists() or (config_dir / "access_token").exists()


def fetch_kaggle(competition: str, root: Path, files: list[str] | None = None) -> dict[str, Any]:
    """`kaggle competitions download` with the user's own token, then unzip."""
    exe = shutil.which("kaggle")
    if exe is None:
        raise ConfigError("kaggle source: the `kaggle` command is not installed; it comes with envs/slide.yaml "
                          "(run with --use-conda) or `pip install kaggle`")
    if not _kaggle_credentials():
        raise ConfigError(
            "kaggle source: no Kaggle credentials. Create an API token at https://www.kaggle.com/settings "
            "(Account > API > Create New Token), save it as ~/.kaggle/kaggle.json (chmod 600) or export "
            f"KAGGLE_USERNAME and KAGGLE_KEY, and accept the rules of the '{competition}' competition on its page. "
            "Or download it yourself and use `source: local`"
        )
    root.mkdir(parents=True, exist_ok=True)
    calls = [[exe, "competitions", "download", "-c", competition, "-p", str(root)]]
    if files:
        calls = [call + ["-f", name] for call in calls for name in files]
    for call in calls:
        log.info("running %s", " ".join(call))
        done = subprocess.run(call, capture_output=True, text=True)
        log.info("%s%s", done.stdout, done.stderr)
        if done.returncode != 0:
            raise DownloadError(f"kaggle download failed ({done.returncode}): {done.stderr.strip()[-500:]}; "
                                f"check your token and that you accepted the competition's rules")
    for archive in sorted(root.glob("*.zip")):
        extract(archive, root)
    return {"competition": competition}


def fetch_s3(bucket: str, root: Path, files: list[str] | None = None) -> dict[str, Any]:
    """Anonymous copy from a public bucket (`bucket` = name/prefix): the AWS CLI if present, else boto3."""
    bucket = bucket.removeprefix("s3://").strip("/")
    root.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("aws")
    if exe is not None:
        call = [exe, "s3", "sync", "--no-sign-request", "--only-show-errors", f"s3://{bucket}", str(root)]
        if files:
            call += ["--exclude", "*"] + [arg for name in files for arg in ("--include", name)]
        log.info("running %s", " ".join(call))
        done = subprocess.run(call, capture_output=True, text=True)
        log.info("%s%s", done.stdout, done.stderr)
        if done.returncode != 0:
            raise DownloadError(f"aws s3 sync failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return {"bucket": bucket, "tool": "aws"}
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigError("s3 source: neither the AWS CLI (`aws`) nor boto3 is installed; both come with "
                          "envs/slide.yaml (run with --use-conda), or `pip install awscli`") from exc
    import fnmatch

    name, _, prefix = bucket.partition("/")
    client = boto3.client("s3", config=Config(signature_version=UNSIGNED))
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):].lstrip("/")
            if not rel or (files and not any(fnmatch.fnmatch(rel, pat) for pat in files)):
                continue
            dest = root / rel
            if dest.exists() and dest.stat().st_size == obj["Size"]:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            client.download_file(name, obj["Key"], str(tmp))
            os.replace(tmp, dest)
    return {"bucket": bucket, "tool": "boto3"}


def fetch_source(dataset: str, ds_cfg: dict[str, Any], root: str | os.PathLike[str], manifest: str) -> None:
    """Rule entry point: bring one dataset's files under `root` and record how in `manifest` (JSON)."""
    root = Path(root)
    source = ds_cfg["source"]

    def need(key: str) -> Any:
        if not ds_cfg.get(key):
            raise ConfigError(f"dataset_config.{dataset}.{key} is required for source: {source}")
        return ds_cfg[key]

    if source == "local":
        info = link_local(need("path"), root)
    elif source == "url":
        info = fetch_urls(need("urls"), root)
    elif source == "kaggle":
        info = fetch_kaggle(need("competition"), root, ds_cfg.get("files"))
    elif source == "s3":
        info = fetch_s3(need("bucket"), root, ds_cfg.get("files"))
    else:
        raise ConfigError(f"dataset_config.{dataset}.source: {source!r} is not fetched by the datasets rules")
    write_json(manifest, {"dataset": dataset, "source": source, "root": str(root), **info})
    log.info("%s: %s", dataset, json.dumps(info)[:500])
