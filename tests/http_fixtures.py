"""A small HTTP(S) file server on 127.0.0.1 for the download tests (no network is ever touched).

It speaks enough HTTP/1.1 to exercise resumes: `Range: bytes=N-`, strong ETags and Last-Modified, `If-Range`
(a stale validator gets the whole new file with 200, as RFC 9110 says). Per-path switches make it misbehave the
ways real servers do: cut a body halfway once, send no validator, answer a range request for other bytes,
redirect elsewhere. `https=True` serves TLS with a throwaway self-signed certificate made by the openssl CLI.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _validators(self, path: str, body: bytes) -> dict[str, str]:
        if path in self.server.no_validator:
            return {}
        return {"ETag": f'"{hashlib.sha256(body).hexdigest()[:16]}"', "Last-Modified": LAST_MODIFIED}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        path = self.path.split("?")[0]
        srv.requests.append((self.path, self.headers.get("Range"), self.headers.get("If-Range"),
                             self.headers.get("Authorization")))
        if path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = srv.files.get(path)
        if body is None:
            self.send_error(404)
            return
        validators = self._validators(path, body)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        fresh = if_range is None or if_range in validators.values()
        if match and fresh:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path in srv.wrong_range:  # claims a range, sends the file from byte 0
                self.send_response(206)
                self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
                start = 0
            else:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in validators.items():
            self.send_header(key, value)
        self.end_headers()
        if path in srv.cut_once:
            srv.cut_once.discard(path)
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the peer sees a truncated body
            return
        self.wfile.write(chunk)


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    return cert, key


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


@contextmanager
def serve(files: dict[str, bytes], tls_dir: Path | None = None) -> Iterator[http.server.ThreadingHTTPServer]:
    """A running server with `files` ({path: bytes}); `.url(path)` gives its address, `.cert` the CA file."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.requests = dict(files), []
    srv.cut_once, srv.no_validator, srv.wrong_range, srv.redirects = set(), set(), set(), {}
    srv.cert = None
    scheme = "http"
    if tls_dir is not None:
        cert, key = _certificate(tls_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        srv.cert, scheme = cert, "https"
    port = srv.server_address[1]
    srv.url = lambda path="/data.bin": f"{scheme}://127.0.0.1:{port}{path}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
