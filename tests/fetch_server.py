"""A local HTTP server on 127.0.0.1 for the fetch tests: plain files (with Range) and the parts
of the Hugging Face Hub API that ``get_hf_file_metadata`` / ``hf_hub_download`` use
(``HEAD``/``GET {endpoint}[/datasets]/{repo}/resolve/{revision}/{file}`` with ``X-Repo-Commit``,
``X-Linked-Etag`` (the LFS sha256), ``X-Linked-Size``, ``ETag``). Per-file behaviours simulate a
bad network: cut after N bytes, stall, lie about the size or hash, 404."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Served:
    data: bytes
    cut_after: int | None = None  # close the connection after this many body bytes (per request)
    cuts: int = 1  # how many requests get cut
    stall: float = 0.0  # seconds of silence after the first body bytes
    sha256: str | None = None  # the Hub's advertised sha256 (default: the true one)
    size: int | None = None  # the Hub's advertised size (default: the true one)
    throttle: float = 0.0  # seconds between 64 kB blocks
    requests: list = field(default_factory=list)  # (method, Range header) seen


class FetchServer:
    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = self.path.split("?")[0]
                hub = re.match(r"^(?:/datasets)?/(.+?/.+?)/resolve/([^/]+)/(.+)$", path)
                key = f"{hub.group(1)}/{hub.group(3)}" if hub else path.lstrip("/")
                served = server.files.get(key)
                if served is None:
                    self.send_response(404)
                    if hub:
                        self.send_header("X-Error-Code", "EntryNotFound")
                        self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                served.requests.append((self.command, self.headers.get("Range")))
                data = served.data
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                etag = f'"{hashlib.md5(data).hexdigest()}"'
                if_range = self.headers.get("If-Range")
                if match and body and (if_range is None or if_range == etag):  # RFC 9110 If-Range
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                if not hub:
                    self.send_header("ETag", etag)
                if hub:
                    sha = served.sha256 or hashlib.sha256(data).hexdigest()
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("ETag", f'"{sha}"')
                    self.send_header("X-Linked-Size", str(served.size if served.size is not None else len(data)))
                self.end_headers()
                if not body:
                    return
                chunk = data[start:]
                cut = served.cut_after if served.cuts > 0 else None
                if cut is not None:
                    served.cuts -= 1
                    chunk = chunk[:cut]
                sent = 0
                try:
                    for i in range(0, len(chunk), 65536):
                        self.wfile.write(chunk[i:i + 65536])
                        self.wfile.flush()
                        sent += 1
                        if served.stall and sent == 1:
                            time.sleep(served.stall)
                        if served.throttle:
                            time.sleep(served.throttle)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, key: str, data: bytes, **behaviour) -> Served:
        self.files[key] = Served(data, **behaviour)
        return self.files[key]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
