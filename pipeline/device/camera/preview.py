"""An MJPEG preview of the annotated frames over HTTP, for headless devices.

Bound to loopback unless told otherwise (a camera feed is not something to publish on a
network by accident); any browser shows ``http://127.0.0.1:PORT/``.
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from pipeline.errors import DataError

BOUNDARY = "edgeresnetframe"


class MjpegPreview:
    """Serves the newest published frame to every client as multipart/x-mixed-replace."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.jpeg: bytes | None = None
        self.condition = threading.Condition()
        self.closed = False
        try:
            self.server = ThreadingHTTPServer((host, port), self._handler())
        except OSError as exc:  # a port in use or not ours to bind: the user's to change
            raise DataError(f"preview {host}:{port}: cannot listen there ({exc.strerror or exc}); "
                            f"choose another --preview-port, or 0 for any free one") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def publish(self, frame: np.ndarray) -> None:
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            with self.condition:
                self.jpeg = data.tobytes()
                self.condition.notify_all()

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def _next(self, last: bytes | None, timeout: float = 5.0) -> bytes | None:
        with self.condition:
            self.condition.wait_for(lambda: self.closed or (self.jpeg is not None and self.jpeg is not last),
                                    timeout=timeout)
            return None if self.closed else self.jpeg

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        preview = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                last = None
                try:
                    while (jpeg := preview._next(last)) is not None:
                        last = jpeg
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        return Handler
