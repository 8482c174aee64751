"""A real HTTP server on 127.0.0.1 that records every request it sees."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.vision import images

RED_PNG = images.encode(images.solid(images.RED), "PNG")
BLUE_PNG = images.encode(images.solid(images.BLUE), "PNG")


class ImageServer:
    """Serves /red.png, /blue.png, /redirect?to=URL, /big, /big-chunked, /html, and
    /slow: red.png after `slow_s` seconds, or after ?s=SECONDS."""

    def __init__(self, big_bytes: int = 1 << 20, slow_s: float = 3.0) -> None:
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.big_bytes, self.slow_s = big_bytes, slow_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Host", "")))
                server.route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def route(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        if parts.path in ("/red.png", "/blue.png"):
            self._send(handler, 200, RED_PNG if parts.path == "/red.png" else BLUE_PNG)
        elif parts.path == "/redirect":
            handler.send_response(302)
            handler.send_header("Location", parse_qs(parts.query)["to"][0])
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        elif parts.path == "/big":
            self._send(handler, 200, b"\x89PNG" + b"\0" * self.big_bytes)
        elif parts.path == "/big-chunked":
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            handler.send_header("Connection", "close")
            handler.end_headers()
            try:
                for _ in range(self.big_bytes // 65536 + 1):
                    handler.wfile.write(b"\0" * 65536)
            except OSError:
                pass  # the client hung up at its limit
        elif parts.path == "/slow":
            time.sleep(float(parse_qs(parts.query).get("s", [self.slow_s])[0]))
            self._send(handler, 200, RED_PNG)
        elif parts.path == "/html":
            self._send(handler, 200, b"<html></html>", "text/html")
        else:
            self._send(handler, 404, b"", "text/plain")

    @staticmethod
    def _send(handler, status: int, body: bytes, content_type: str = "image/png") -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass
