"""A loopback HTTP server that plays YouTube for the fetch tests.

``GET /{name}.mp4`` serves ``{root}/{name}.mp4`` with Range support (ffmpeg seeks in mp4 over
HTTP).  Names that start with a status code answer with it instead: ``E404xxxxxxx`` -> 404,
``E403...`` -> 403, ``E429...`` -> 429; ``SLOW...`` waits ``slow_seconds`` before answering (a
timeout).  Every request is counted per path in ``hits``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self


class Loopback:
    def __init__(self, root: Path, slow_seconds: float = 3.0):
        self.root = root
        self.slow_seconds = slow_seconds
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                name = self.path.lstrip("/").split("?")[0]
                server.hits[name] += 1
                for code in (404, 403, 429):
                    if name.startswith(f"E{code}"):
                        self.send_response(code)
                        if code == 429:
                            self.send_header("Retry-After", "1")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                if name.startswith("SLOW"):
                    time.sleep(server.slow_seconds)
                path = server.root / name
                if "/" in name or not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                start, end = 0, len(data) - 1
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start = int(a) if a else 0
                    end = min(int(b), end) if b else end
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if body:
                    try:
                        self.wfile.write(data[start : end + 1])
                    except (BrokenPipeError, ConnectionResetError):
                        pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url_template = f"http://127.0.0.1:{self.port}/{{youtube_id}}.mp4"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
