"""Cached, checked, resumable download of zoo files.

Why our own loop over :mod:`urllib` instead of ``torch.hub.download_url_to_file``: torch.hub shows progress
and checks a hash prefix but cannot resume an interrupted multi-GB download and hashes only after the whole
file is in; here the file is streamed into ``<name>.part`` (sha256 computed while writing), resumed with an
HTTP ``Range`` request when a ``.part`` exists (restarted when the server ignores the range), checked
(size, sha256 or its prefix) and only then renamed into place, so the cache never holds a half file under
the final name. Progress bars come from ``tqdm`` (a timm dependency, always present). ``hf-hub:`` files
go through ``huggingface_hub.hf_hub_download``, which has its own cache, resume and etag checks
(``$HF_ENDPOINT`` read at each call, so a mirror or a test server can stand in for the Hub).

Cache directory: ``$BEIT3_PLUGINS_CACHE``, else ``$XDG_CACHE_HOME/beit3-plugins``, else
``~/.cache/beit3-plugins``. ``$BEIT3_PLUGINS_MIRROR`` (a base URL) replaces the host and folder of every
published URL (an internal mirror; tests point it at a loopback server). ``$BEIT3_PLUGINS_OFFLINE=1``
forbids the network: a file missing from the cache is an error naming the URL and the path to put it at.

The release lists publish no checksums. A file whose sha256 is unknown gets one recorded in
``<name>.sha256`` (with its size) on first download; later uses compare the file's size with it, and
``verify=True`` re-hashes it.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

from .entries import ZooFile

__all__ = ["cache_dir", "download_file", "resolve_url", "ZooDownloadError", "CACHE_ENV", "MIRROR_ENV", "OFFLINE_ENV"]

CACHE_ENV = "BEIT3_PLUGINS_CACHE"
MIRROR_ENV = "BEIT3_PLUGINS_MIRROR"
OFFLINE_ENV = "BEIT3_PLUGINS_OFFLINE"
_CHUNK = 1 << 20


class ZooDownloadError(RuntimeError):
    """A zoo file could not be fetched or failed its size / hash check."""


def cache_dir(override: Union[str, os.PathLike, None] = None) -> Path:
    if override is not None:
        return Path(override)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "beit3-plugins"


def resolve_url(file: ZooFile, mirror: Optional[str] = None) -> str:
    """The URL to fetch ``file`` from: the published one, or ``<mirror>/<filename>``."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if mirror and not file.url.startswith("hf-hub:"):
        return mirror.rstrip("/") + "/" + file.filename
    return file.url


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(file: ZooFile, path: Path, size: int, sha256: str, url: str) -> None:
    problems = []
    if file.size is not None and size != file.size:
        problems.append(f"size {size} bytes, expected {file.size}")
    if file.sha256 is not None and sha256 != file.sha256.lower():
        problems.append(f"sha256 {sha256}, expected {file.sha256}")
    if file.sha256_prefix is not None and not sha256.startswith(file.sha256_prefix.lower()):
        problems.append(f"sha256 {sha256} does not start with {file.sha256_prefix} (from the file name)")
    if problems:
        raise ZooDownloadError(f"{url} -> {path}: {'; '.join(problems)}. The download was discarded; retry, or "
                               f"put a correct copy at {path}")


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _cached_ok(file: ZooFile, path: Path, verify: bool, url: str) -> bool:
    if not path.is_file():
        return False
    size = path.stat().st_size
    record = _record_path(path)
    recorded = json.loads(record.read_text()) if record.is_file() else None
    if recorded is not None and recorded.get("size") != size:
        raise ZooDownloadError(f"{path} is {size} bytes but was {recorded.get('size')} when downloaded from "
                               f"{recorded.get('url')}: the cached file changed. Delete it to download again")
    if verify or recorded is None or file.sha256 or file.sha256_prefix:
        sha = recorded["sha256"] if recorded is not None and not verify else _sha256_of(path)
        if recorded is not None and sha != recorded["sha256"]:
            raise ZooDownloadError(f"{path}: sha256 {sha} differs from {recorded['sha256']} recorded at download; "
                                   "the cached file is damaged. Delete it to download again")
        _check(file, path, size, sha, f"cached {url}")
        if recorded is None:
            record.write_text(json.dumps({"url": url, "size": size, "sha256": sha}))
    elif file.size is not None and size != file.size:
        _check(file, path, size, recorded["sha256"], f"cached {url}")
    return True


def download_file(file: ZooFile, *, cache: Union[str, os.PathLike, None] = None, mirror: Optional[str] = None,
                  progress: bool = True, verify: bool = False, offline: Optional[bool] = None,
                  timeout: float = 60.0) -> Path:
    """Local path of ``file``, downloading it into the cache first if needed (see the module docstring)."""
    url = resolve_url(file, mirror)
    if url.startswith("hf-hub:"):
        return _hf_hub(url, cache)
    folder = cache_dir(cache)
    path = folder / file.filename
    if _cached_ok(file, path, verify, url):
        return path
    offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0") if offline is None else offline
    if offline:
        raise ZooDownloadError(f"{file.filename} is not in the cache and downloads are off ({OFFLINE_ENV}). "
                               f"Download {url} yourself and put it at {path}")
    folder.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "beit3-plugins"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the range starts past the end: the part is complete or stale
            part.unlink()
            return download_file(file, cache=cache, mirror=mirror, progress=progress, verify=verify,
                                 offline=offline, timeout=timeout)
        raise ZooDownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}. Download it yourself and "
                               f"put it at {path}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ZooDownloadError(f"cannot download {url} ({reason}); offline? Download it yourself and put it at "
                               f"{path} (or set {CACHE_ENV} to a folder that holds it)") from exc
    with response:
        resumed = start > 0 and response.status == 206
        if resumed:
            with open(part, "rb") as fh:
                for block in iter(lambda: fh.read(_CHUNK), b""):
                    digest.update(block)
        else:
            start = 0  # the server sent the whole file: restart
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else file.size
        from tqdm.auto import tqdm

        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                desc=file.filename) as bar:
            while True:
                try:
                    block = response.read(_CHUNK)
                except (http.client.IncompleteRead, OSError):  # connection dropped: keep the part, resume later
                    break
                if not block:
                    break
                out.write(block)
                digest.update(block)
                bar.update(len(block))
    size = part.stat().st_size
    sha = digest.hexdigest()
    if total is not None and size != total:
        raise ZooDownloadError(f"{url}: the connection ended after {size} of {total} bytes; the partial file "
                               f"{part} is kept and the next call resumes it")
    try:
        _check(file, path, size, sha, url)
    except ZooDownloadError:
        part.unlink()
        raise
    os.replace(part, path)
    _record_path(path).write_text(json.dumps({"url": url, "size": size, "sha256": sha}))
    return path


def _hf_hub(url: str, cache: Union[str, os.PathLike, None]) -> Path:
    """``hf-hub:<org>/<repo>/<path in repo>`` through huggingface_hub (its cache unless ``cache`` is given)."""
    spec = url[len("hf-hub:"):]
    parts = spec.split("/", 2)
    if len(parts) != 3:
        raise ValueError(f"hf-hub names are 'hf-hub:<org>/<repo>/<file>', got {url!r}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ImportError(f"{url} needs huggingface_hub: pip install 'beit3-plugins[hub]'") from exc
    return Path(hf_hub_download(repo_id="/".join(parts[:2]), filename=parts[2],
                                cache_dir=None if cache is None else str(cache),
                                endpoint=os.environ.get("HF_ENDPOINT") or None))
