"""HTTPS transfers that cannot splice two versions of a file, downgrade to plain HTTP, or leak a URL's secrets.

- **Resume only with a validator.** A `.part` file is continued only when the first response gave a validator
  (a strong ETag, else Last-Modified), recorded beside it in `<part>.json`; the resume asks with `Range` and
  `If-Range`, and its `Content-Range` must start exactly where the part ends (and agree on the total). Anything
  else (no validator, a changed file, a server that ignores Range or answers for other bytes) restarts from zero:
  appending the tail of a different version would make a file of the wrong size and content.
- **https only**, redirects included, unless the dataset opts in with `allow_http: true`.
- **Secrets stay out of messages.** Signed URLs carry tokens in their query string and some carry user:password;
  every message and log line shows `redact(url)`, and exception texts are scrubbed the same way. User info is
  sent as a Basic Authorization header that is dropped on redirects.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from tqdm import tqdm

from msamil.errors import ConfigError, MsamilError
from msamil.util.atomic import write_json

log = logging.getLogger(__name__)


class DownloadError(MsamilError):
    """A transfer failed for good, or its content is not what the config promised."""


def redact(url: str) -> str:
    """The URL without user info, query string or fragment (each replaced by `***`): safe to print."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def scrub(text: str, url: str) -> str:
    """`text` (an exception message, a server reply) with the URL's secrets replaced as `redact` does."""
    parts = urlsplit(url)
    secrets = [url, parts.query, parts.fragment]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        secrets += [userinfo, unquote(userinfo), *userinfo.split(":", 1)]
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, redact(url) if secret == url else "***")
    return text


def check_url(url: str, allow_http: bool, where: str) -> None:
    """ConfigError unless `url` is https (or http with the dataset's `allow_http: true`)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme == "http" and allow_http):
        return
    if scheme == "http":
        raise ConfigError(f"{where}: {redact(url)} is plain http (unencrypted: anyone on the path can read or "
                          f"change it); use https, or set allow_http: true for this dataset and give a sha256")
    raise ConfigError(f"{where}: {redact(url)} has scheme {scheme or 'none'!r}; only https:// URLs are fetched "
                      f"(for files you already have, use source: local)")


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to https (or http when allowed); a signed URL's redirect is redacted if refused."""

    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        scheme = urlsplit(newurl).scheme.lower()
        if scheme != "https" and not (scheme == "http" and self.allow_http):
            raise DownloadError(f"{redact(req.full_url)} redirects to {redact(newurl)}; refused (only https is "
                                f"followed unless the dataset sets allow_http: true)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _request(url: str, headers: dict[str, str]) -> urllib.request.Request:
    """A request without user info in the URL; user:password becomes an Authorization header kept off redirects."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return urllib.request.Request(url, headers=headers)
    userinfo, host = parts.netloc.rsplit("@", 1)
    req = urllib.request.Request(urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)),
                                 headers=headers)
    token = base64.b64encode(unquote(userinfo).encode()).decode()
    req.add_unredirected_header("Authorization", f"Basic {token}")
    return req


def _validator(headers: Any) -> str | None:
    """What If-Range may carry: a strong ETag, else Last-Modified, else None (weak ETags are not allowed)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()  # identifies the URL without storing its secrets


def _resume_from(url: str, part: Path) -> tuple[int, dict[str, Any] | None]:
    """(bytes to keep, recorded validator state): zero unless the part has a validator for this very URL."""
    have = part.stat().st_size if part.exists() else 0
    if not have:
        return 0, None
    try:
        meta = json.loads(_meta_path(part).read_text())
    except (OSError, ValueError):
        meta = None
    if not meta or meta.get("url") != _url_key(url) or not meta.get("validator"):
        log.info("%s: the partial download has no validator (ETag or Last-Modified) for this URL; starting over",
                 part.name)
        return 0, None
    return have, meta


def transfer(url: str, part: Path, *, allow_http: bool = False, timeout: float = 60.0, chunk: int = 1 << 20,
             _restarted: bool = False) -> None:
    """Bring `part` up to the whole file at `url`: resumed when safely possible, else from byte zero."""
    have, meta = _resume_from(url, part)
    headers = {"User-Agent": "msamil-download"}
    if have and meta:
        headers.update({"Range": f"bytes={have}-", "If-Range": meta["validator"]})
    opener = urllib.request.build_opener(_NoDowngrade(allow_http))
    try:
        resp = opener.open(_request(url, headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and meta:
            match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", exc.headers.get("Content-Range") or "")
            if match and int(match.group(1)) == have and meta.get("length") in (None, have):
                return  # the part is already the whole file
            part.unlink(missing_ok=True)
            if not _restarted:
                return transfer(url, part, allow_http=allow_http, timeout=timeout, chunk=chunk, _restarted=True)
        raise
    with resp:
        start = 0
        if have and resp.status == 206:
            span = _content_range(resp.headers.get("Content-Range"))
            if span is None or span[0] != have or (meta and meta.get("length") not in (None, span[2])):
                log.warning("%s: the server resumed at %s, not at byte %d; starting over", part.name,
                            resp.headers.get("Content-Range"), have)
                part.unlink(missing_ok=True)
                if _restarted:
                    raise DownloadError(f"{redact(url)}: the server answers range requests inconsistently")
                resp.close()
                return transfer(url, part, allow_http=allow_http, timeout=timeout, chunk=chunk, _restarted=True)
            start = have
        elif resp.status == 206:
            raise DownloadError(f"{redact(url)}: partial content for a request without Range")
        else:
            if have:
                log.info("%s: the file changed on the server (or Range is ignored); starting over", part.name)
            length = resp.headers.get("Content-Length")
            write_json(_meta_path(part), {"url": _url_key(url), "validator": _validator(resp.headers),
                                          "length": int(length) if length is not None else None})
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "ab" if start else "wb") as out, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=part.name[:40]) as bar:
            while block := resp.read(chunk):
                out.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise http.client.IncompleteRead(b"", total - size)


def finish(part: Path, dest: Path) -> None:
    """Move a complete part into place and forget its validator."""
    part.replace(dest)
    _meta_path(part).unlink(missing_ok=True)


def discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)
