"""A loopback HTTP file server for zoo tests: serves a folder on 127.0.0.1 with HTTP Range support, and can
cut a response short once (an interrupted download) or ignore Range (a server that restarts)."""
from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Dict, List, Optional


class ZooServer:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.requests: List[Dict[str, Optional[str]]] = []
        self.cut_after: Optional[int] = None      # bytes sent before the next response is dropped (once)
        self.honour_range = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):  # noqa: N802 - the metadata request of huggingface_hub
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                import hashlib

                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"%s"' % hashlib.sha256(data).hexdigest())
                self.send_header("X-Repo-Commit", "0" * 40)
                self.end_headers()

            def do_GET(self):  # noqa: N802
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start, status = 0, 200
                ranged = self.headers.get("Range")
                if ranged and server.honour_range:
                    start = int(ranged.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if server.cut_after is not None:
                    cut, server.cut_after = server.cut_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ZooServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
