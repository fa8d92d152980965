"""Fetch a dataset's files from where the user has them: a local directory, URLs, Kaggle or a public S3 bucket.

Public pathology datasets are tens to hundreds of GB, so a download must survive a dropped connection (HTTP Range
resume from a `.part` file that outlives the job, so a Snakemake retry resumes too, but only with a
validator: msamil.datasets.secure_http), must be verified (the configured sha256, else the one recorded at the
first download; a bad file is removed rather than silently used), must stay inside the dataset folder (archive members, S3 keys) and
must never duplicate what the user already has (local = symlink). Every source writes a manifest whose `root` is
the directory the dataset definition scans.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import zipfile
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from msamil.datasets import secure_http
from msamil.datasets.secure_http import DownloadError, check_url, redact, scrub
from msamil.errors import ConfigError
from msamil.util.atomic import write_json
from msamil.util.checksum import sha256_file

log = logging.getLogger(__name__)
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2")


MANIFEST = ".msamil-downloads.json"  # per dataset folder: sha256 of every file at its first download


def fetch_url(url: str, dest: str | os.PathLike[str], sha256: str | None = None, *, recorded: str | None = None,
              allow_http: bool = False, retries: int = 5, timeout: float = 60.0, backoff: float = 2.0,
              chunk: int = 1 << 20) -> Path:
    """Download `url` to `dest`, resuming after interruptions only when safe, then verify its sha256.

    `sha256` is the config's checksum; without one, `recorded` (the sha256 of this file's first download, from
    the dataset's manifest) is checked instead, on the file already there as on a new download. The partial
    file is `dest + ".part"` (plus its validator in `.part.json`); it stays on disk after a failure so that the
    next attempt, in this call or a later job, can continue (secure_http.transfer decides whether it may). Messages never show the URL's query string or user info.
    """
    dest, shown = Path(dest), redact(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = sha256.lower() if sha256 else None
    if dest.exists():
        got = sha256_file(dest)
        if expected is None and recorded is not None and got != recorded:
            raise DownloadError(f"{dest} changed since its first download (sha256 now {got}, recorded {recorded} "
                                f"in {dest.parent / MANIFEST}); delete it and rerun to download it again")
        if got == (expected or recorded or got):
            log.info("%s: present and verified", dest)
            return dest
        log.warning("%s: sha256 %s is not the configured %s; downloading it again", dest, got, expected)
    dest.unlink(missing_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            secure_http.transfer(url, part, allow_http=allow_http, timeout=timeout, chunk=chunk)
            break
        except (OSError, HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise DownloadError(f"{shown}: HTTP {exc.code} {scrub(str(exc.reason), url)}; check the URL in "
                                    f"dataset_config.<dataset>.urls") from None
            reason = scrub(f"{type(exc).__name__}: {exc}", url)
            if attempt == retries:
                raise DownloadError(f"{shown}: gave up after {retries + 1} attempts ({reason}); rerun to resume "
                                    f"from {part}") from None
            wait = backoff * 2**attempt
            log.warning("%s: attempt %d failed (%s); retrying in %.0f s", shown, attempt + 1, reason, wait)
            time.sleep(wait)
    got = sha256_file(part)
    if got != (expected or recorded or got):
        secure_http.discard(part)
        if expected:
            raise DownloadError(f"{shown}: sha256 mismatch (expected {expected}, got {got}); the file was "
                                f"removed. Rerun to download it again, or fix the sha256 in the config")
        raise DownloadError(f"{shown}: the server now sends other content than at the first download (sha256 "
                            f"{got}, recorded {recorded} in {dest.parent / MANIFEST}); the file was removed. If "
                            f"the change is expected, put the new sha256 in the config (urls[].sha256)")
    if expected is None and recorded is None:
        log.warning("%s: no sha256 in the config; recording this download's (%s) and checking it from now on",
                    shown, got)
    secure_http.finish(part, dest)
    return dest


def _inside(root: Path, rel: str, what: str) -> Path:
    """root / rel, refusing names that would land outside root (absolute, `..`, or through a symlink)."""
    target = root / rel
    if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts or \
            not target.resolve().is_relative_to(root.resolve()):
        raise DownloadError(f"{what} {rel!r} would be written outside {root}; refused (the source is malformed "
                            f"or malicious)")
    return target


def extract(archive: Path, into: Path) -> None:
    """Unpack once (a marker file records it), refusing members that would land outside `into`."""
    marker = into / f".{archive.name}.extracted"
    if marker.exists():
        return
    log.info("extracting %s", archive)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _inside(into, name, f"{archive.name}: member")
            zf.extractall(into)
    else:
        with tarfile.open(archive) as tf:
            try:
                tf.extractall(into, filter="data")
            except tarfile.FilterError as exc:
                raise DownloadError(f"{archive.name}: member {exc.tarinfo.name!r} would be written outside {into} "
                                    f"or is an unsafe link ({exc}); refused") from exc
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


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise DownloadError(f"{root / MANIFEST} is unreadable ({exc}); delete it (the next download records "
                            f"the checksums again)") from exc


def fetch_urls(entries: list[dict[str, Any]], root: Path, retries: int = 5, allow_http: bool = False) -> dict[str, Any]:
    """Download each `{url, sha256, dest}` under root; archives are unpacked next to themselves.

    Every URL is checked (https, a safe destination) before anything is fetched. Files without a configured
    sha256 get the one of their first download recorded in `root/.msamil-downloads.json`, checked ever after.
    """
    root.mkdir(parents=True, exist_ok=True)
    plan = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "url" not in entry:
            raise ConfigError(f"dataset_config.<dataset>.urls[{i}] must be a mapping with url, sha256 and "
                              f"optionally dest; got a {type(entry).__name__}")
        check_url(entry["url"], allow_http, f"dataset_config.<dataset>.urls[{i}]")
        dest_name = entry.get("dest") or PurePosixPath(urlsplit(entry["url"]).path).name
        if not dest_name or PurePosixPath(dest_name).is_absolute() or ".." in PurePosixPath(dest_name).parts:
            raise ConfigError(f"urls[{i}].dest must be a relative path inside the dataset folder: {dest_name!r}")
        plan.append((entry, dest_name))
    manifest = _read_manifest(root)
    files = {}
    for entry, dest_name in plan:
        dest = fetch_url(entry["url"], root / dest_name, entry.get("sha256"), recorded=manifest.get(dest_name),
                         allow_http=allow_http, retries=retries)
        if dest_name not in manifest:
            manifest[dest_name] = (entry.get("sha256") or sha256_file(dest)).lower()
            write_json(root / MANIFEST, manifest)
        if entry.get("extract", _is_archive(dest.name)):
            extract(dest, dest.parent)
        files[dest_name] = manifest[dest_name]
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


def fetch_s3(bucket: str, root: Path, files: list[str] | None = None, client: Any = None) -> dict[str, Any]:
    """Anonymous copy from a public bucket (`bucket` = name/prefix): the AWS CLI if present, else boto3.

    With boto3 every key must map inside `root` (a key like `a/../../x` is refused); `client` replaces the
    anonymous boto3 client (tests).
    """
    bucket = bucket.removeprefix("s3://").strip("/")
    root.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("aws") if client is None else None
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
    if client is None:
        try:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config
        except ImportError as exc:
            raise ConfigError("s3 source: neither the AWS CLI (`aws`) nor boto3 is installed; both come with "
                              "envs/slide.yaml (run with --use-conda), or `pip install awscli`") from exc
        client = boto3.client("s3", config=Config(signature_version=UNSIGNED))
    import fnmatch

    name, _, prefix = bucket.partition("/")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):].lstrip("/")
            if not rel or rel.endswith("/") or (files and not any(fnmatch.fnmatch(rel, pat) for pat in files)):
                continue
            dest = _inside(root, rel, f"s3://{name}: key")
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
        info = fetch_urls(need("urls"), root, allow_http=bool(ds_cfg.get("allow_http", False)))
    elif source == "kaggle":
        info = fetch_kaggle(need("competition"), root, ds_cfg.get("files"))
    elif source == "s3":
        info = fetch_s3(need("bucket"), root, ds_cfg.get("files"))
    else:
        raise ConfigError(f"dataset_config.{dataset}.source: {source!r} is not fetched by the datasets rules")
    write_json(manifest, {"dataset": dataset, "source": source, "root": str(root), **info})
    log.info("%s: %s", dataset, json.dumps(info)[:500])
