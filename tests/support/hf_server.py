"""A loopback Hugging Face Hub for tests: the routes huggingface_hub's ``create_repo`` / ``upload_folder`` and
``snapshot_download`` / ``hf_hub_download`` call (checked against huggingface_hub 2.4's ``hf_api.py``,
``_commit_api.py``, ``_snapshot_download.py`` and ``file_download.py``), answered on 127.0.0.1 from memory.

    POST /api/repos/create                                  {"name", "organization"} -> {"url"}; 409 if it exists
    POST /api/validate-yaml                                 model card metadata check -> no errors
    POST /api/models/<org>/<name>/preupload/<rev>           every file "regular" (inline base64, no LFS / Xet)
    POST /api/models/<org>/<name>/commit/<rev>              ndjson header + files -> {"commitUrl", "commitOid"}
    GET  /api/models/<org>/<name>[/revision/<rev>]          {"id", "sha", "siblings"}
    GET  /api/models/<org>/<name>/tree/<rev>                [{"type": "file", "path", "size", "oid"}]
    HEAD|GET /<org>/<name>/resolve/<rev>/<path>             the file, with X-Repo-Commit and ETag (git blob sha1)

Point huggingface_hub at it with ``HF_ENDPOINT`` (or ``endpoint=``). Files live only in memory; a path
outside a repo's files is a 404, so nothing on disk is ever served.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from typing import Dict, List
from urllib.parse import unquote, urlparse


def _blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    def __init__(self) -> None:
        self.repos: Dict[str, Dict[str, bytes]] = {}
        self.commits: Dict[str, str] = {}
        self.requests: List[str] = []
        self.unknown: List[str] = []     # routes the server does not answer (a test asserts it stays empty)
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _send(self, status: int, payload=None, headers: Dict[str, str] = None, raw: bytes = None,
                      head: bool = False) -> None:
                body = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _not_found(self, what: str, head: bool = False) -> None:
                self._send(404, {"error": what}, headers={"X-Error-Code": "RepoNotFound" if "repo" in what
                                                          else "EntryNotFound"}, head=head)

            def _route(self, method: str) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{method} {path}")
                parts = [p for p in path.split("/") if p]
                body = self._body() if method == "POST" else b""
                head = method == "HEAD"
                if method == "POST" and parts == ["api", "repos", "create"]:
                    req = json.loads(body)
                    repo = f"{req.get('organization')}/{req['name']}" if req.get("organization") else req["name"]
                    if repo in hub.repos:
                        return self._send(409, {"error": "You already created this model repo",
                                                "url": f"http://{self.headers['Host']}/{repo}"})
                    hub.repos[repo], hub.commits[repo] = {}, "0" * 40
                    return self._send(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
                if method == "POST" and parts == ["api", "validate-yaml"]:
                    return self._send(200, {"errors": [], "warnings": []})
                if len(parts) >= 4 and parts[:2] == ["api", "models"]:
                    repo = "/".join(parts[2:4])
                    if repo not in hub.repos:
                        return self._not_found(f"repo {repo}", head)
                    rest = parts[4:]
                    if method == "POST" and rest[:1] == ["preupload"]:
                        files = json.loads(body)["files"]
                        return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                           "shouldIgnore": False, "oid": None} for f in files]})
                    if method == "POST" and rest[:1] == ["commit"]:
                        files = dict(hub.repos[repo])
                        for line in body.splitlines():
                            item = json.loads(line)
                            if item["key"] == "file":
                                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                            elif item["key"] != "header":
                                return self._send(400, {"error": f"unsupported commit operation {item['key']}"})
                        oid = hashlib.sha1(json.dumps(sorted((k, _blob_sha1(v)) for k, v in files.items()))
                                           .encode()).hexdigest()
                        hub.repos[repo], hub.commits[repo] = files, oid
                        return self._send(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{oid}",
                                                "commitOid": oid, "pullRequestUrl": None})
                    if method == "GET" and (not rest or rest[0] == "revision"):
                        return self._send(200, {"id": repo, "sha": hub.commits[repo], "private": False,
                                                "siblings": [{"rfilename": k} for k in sorted(hub.repos[repo])]})
                    if method == "GET" and rest[:1] == ["tree"]:
                        return self._send(200, [{"type": "file", "path": k, "size": len(v), "oid": _blob_sha1(v)}
                                                for k, v in sorted(hub.repos[repo].items())])
                if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
                    repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                    files = hub.repos.get(repo)
                    if files is None:
                        return self._not_found(f"repo {repo}", head)
                    if name not in files:
                        return self._not_found(f"entry {name}", head)
                    data = files[name]
                    return self._send(200, raw=data, head=head, headers={
                        "X-Repo-Commit": hub.commits[repo], "ETag": f'"{_blob_sha1(data)}"'})
                hub.unknown.append(f"{method} {path}")
                self._send(404, {"error": f"no route {method} {path}"})

            def do_GET(self):  # noqa: N802
                self._route("GET")

            def do_HEAD(self):  # noqa: N802
                self._route("HEAD")

            def do_POST(self):  # noqa: N802
                self._route("POST")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
