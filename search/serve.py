"""``beit3-plugins serve``: an ASGI app over one image index (and optionally a text index) and one model.

Starlette, not FastAPI: the app has six routes whose inputs are a query string and an uploaded file, checked
by hand with messages that name the limit; FastAPI would add pydantic and OpenAPI generation for nothing here.
uvicorn runs it; it binds 127.0.0.1 unless ``--host`` says otherwise.

Routes::

    GET  /                      the web page (one self-contained HTML file, no external resource)
    GET  /api/info              what is loaded
    POST /api/search/text       {"query": str, "k": int}              -> images
    POST /api/search/image      multipart: image, k, target=images|texts -> images or texts
    POST /api/vqa               multipart: image, question             (with --vqa-model)
    POST /api/caption           multipart: image                       (with --caption-model)
    GET  /thumb?source=SOURCE   a JPEG thumbnail of an indexed image (only indexed sources, only inside
                                the indexed folders / shards: ``..``, absolute paths that are not indexed,
                                and symlinks leaving the folders are refused)

Bad input is a 4xx with {"error": message}: a non-image or undecodable upload (415 / 400), an upload over
``max_upload_bytes`` or an image over ``max_pixels`` (checked from the header, before decoding: 413), an empty
or over-long query (400).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import io
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

from .batching import DynamicBatcher
from .model import ModelSpec, add_model_args, load_task_pipeline

__all__ = ["ServeConfig", "create_app", "serve_main", "BadInput", "serving"]

PAGE = Path(__file__).with_name("page.html")


@dataclasses.dataclass
class ServeConfig:
    images: Optional[str] = None            # embed folder of images with its index
    texts: Optional[str] = None             # embed folder of texts with its index (image -> texts)
    vqa: Optional[ModelSpec] = None
    vqa_answers: Optional[str] = None
    caption: Optional[ModelSpec] = None
    device: Optional[str] = None
    dtype: str = "float32"
    batch_window_ms: float = 5.0
    max_batch: int = 32                     # 1 = no dynamic batching
    max_upload_bytes: int = 10 << 20
    max_pixels: int = 40_000_000
    max_query_chars: int = 500
    max_k: int = 100
    thumbnail_size: int = 256


class BadInput(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class SearchService:
    """Everything the routes call, framework-free: indexes, models, batchers, input checks."""

    def __init__(self, cfg: ServeConfig) -> None:
        from .index import SearchIndex, Searcher

        if cfg.images is None and cfg.texts is None:
            raise ValueError("serve needs --images and/or --texts (embed folders with an index)")
        self.cfg = cfg
        images = SearchIndex(cfg.images) if cfg.images else None
        texts = SearchIndex(cfg.texts) if cfg.texts else None
        self.searcher = Searcher(images, texts, device=cfg.device, dtype=cfg.dtype)
        self.embedder = self.searcher.embedder
        self.vqa = (load_task_pipeline(cfg.vqa, "vqa", device=cfg.device, dtype=cfg.dtype, answers=cfg.vqa_answers)
                    if cfg.vqa else None)
        self.captioner = (load_task_pipeline(cfg.caption, "captioning", device=cfg.device, dtype=cfg.dtype)
                          if cfg.caption else None)
        self.sources: Dict[str, int] = {s: i for i, s in enumerate(images.data.sources)} if images else {}
        self.roots = [os.path.realpath(r) for r in (images.data.manifest.get("roots", []) if images else [])]
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        window, size = cfg.batch_window_ms, cfg.max_batch
        self.batchers = {"text": DynamicBatcher(self._embed_texts, self.executor, window, size),
                         "image": DynamicBatcher(self._embed_images, self.executor, window, size)}
        if self.vqa:
            self.batchers["vqa"] = DynamicBatcher(self._answer, self.executor, window, size)
        if self.captioner:
            self.batchers["caption"] = DynamicBatcher(self._caption, self.executor, window, size)
        self._shards: Dict[str, Any] = {}

    # ------------------------------------------------------------------ model calls (worker thread)
    def _embed_texts(self, texts: Sequence[str]):
        return list(self.embedder.embed_texts(list(texts)).cpu().numpy())

    def _embed_images(self, pixels: Sequence[Any]):
        import torch

        return list(self.embedder.embed_images(torch.stack(list(pixels))).cpu().numpy())

    def _answer(self, items: Sequence[Any]):
        import torch

        return self.vqa(torch.stack([p for p, _ in items]), [q for _, q in items], top_k=5)

    def _caption(self, pixels: Sequence[Any]):
        import torch

        return self.captioner(torch.stack(list(pixels)))

    # ------------------------------------------------------------------ input checks
    def check_query(self, query: Any) -> str:
        if not isinstance(query, str) or not query.strip():
            raise BadInput(400, "the query is empty; type some words to search for")
        if len(query) > self.cfg.max_query_chars:
            raise BadInput(400, f"the query has {len(query)} characters; at most {self.cfg.max_query_chars} allowed")
        return query.strip()

    def check_k(self, k: Any) -> int:
        try:
            value = int(k)
        except (TypeError, ValueError):
            raise BadInput(400, f"k must be an integer, got {k!r}") from None
        if not 1 <= value <= self.cfg.max_k:
            raise BadInput(400, f"k must be between 1 and {self.cfg.max_k}, got {value}")
        return value

    def decode_upload(self, data: bytes, pipe) -> Any:
        """Upload bytes -> model input tensor, refusing non-images and oversized images before decoding."""
        from PIL import Image, UnidentifiedImageError

        from .sources import decode_image

        if not data:
            raise BadInput(400, "the upload is empty; choose an image file")
        if len(data) > self.cfg.max_upload_bytes:
            raise BadInput(413, f"the upload has {len(data)} bytes; at most {self.cfg.max_upload_bytes} allowed")
        try:
            with Image.open(io.BytesIO(data)) as probe:        # header only: the size before any decoding
                width, height = probe.size
        except UnidentifiedImageError:
            raise BadInput(415, "the upload is not an image (JPEG, PNG, WebP, BMP, GIF, TIFF)") from None
        except Image.DecompressionBombError as exc:
            raise BadInput(413, f"image refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a broken header is the file's fault
            raise BadInput(400, f"the image cannot be read ({type(exc).__name__}: {exc})") from None
        if width * height > self.cfg.max_pixels:
            raise BadInput(413, f"the image is {width}x{height} = {width * height} pixels; at most "
                                f"{self.cfg.max_pixels} allowed")
        decoded = decode_image(data, "upload")
        if decoded.image is None:
            raise BadInput(400, f"the image cannot be decoded ({decoded.reason}: {decoded.detail})")
        return pipe.transform(decoded.image)

    # ------------------------------------------------------------------ thumbnails
    def thumbnail(self, source: Any) -> bytes:
        if not isinstance(source, str) or not source:
            raise BadInput(400, "give ?source=<an indexed image source>")
        if source not in self.sources:           # covers "../x", absolute paths and anything else not indexed
            raise BadInput(403, f"{source!r} is not an indexed image; thumbnails are served only for the "
                                "indexed sources")
        return self._thumbnail(source)

    @functools.lru_cache(maxsize=4096)
    def _thumbnail(self, source: str) -> bytes:
        from .sources import decode_image

        if "#" in source and not os.path.isfile(source):
            shard, _, key = source.rpartition("#")
            image = decode_image(self._member(shard, key), source).image
        else:
            real = os.path.realpath(source)
            if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots):
                raise BadInput(403, f"{source!r} resolves outside the indexed folders (a symlink?); refused")
            image = decode_image(real, source).image
        if image is None:
            raise BadInput(404, f"{source!r} can no longer be decoded")
        image.thumbnail((self.cfg.thumbnail_size, self.cfg.thumbnail_size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def _member(self, shard: str, key: str) -> bytes:
        from beit3_plugins.data.readers import SkipCounter
        from beit3_plugins.pretraining.shards import TarShardIndex

        index = self._shards.get(shard)
        if index is None:
            index = self._shards[shard] = TarShardIndex(shard, SkipCounter())
        try:
            row = index.keys.index(key)
        except ValueError:
            raise BadInput(404, f"{shard} no longer holds {key!r}") from None
        return index.read(row, 0) or b""


def create_app(cfg: ServeConfig, service: Optional[SearchService] = None):
    """The Starlette app (``uvicorn.run(create_app(cfg))``)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    svc = service or SearchService(cfg)
    page = PAGE.read_text(encoding="utf-8")

    def guarded(handler):
        async def route(request: Request):
            try:
                return await handler(request)
            except BadInput as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
        return route

    async def form_of(request: Request):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > cfg.max_upload_bytes + (1 << 16):
            raise BadInput(413, f"the request has {length} bytes; uploads are limited to {cfg.max_upload_bytes}")
        try:
            return await request.form(max_files=1, max_fields=8, max_part_size=cfg.max_upload_bytes + 1)
        except Exception as exc:  # noqa: BLE001 - multipart parse errors of any kind are the client's
            raise BadInput(400, f"expected a multipart form with an image file ({type(exc).__name__}: {exc})") from None

    async def upload(form, pipe):
        file = form.get("image")
        if file is None or isinstance(file, str):
            raise BadInput(400, "no image file in the form field 'image'")
        data = await file.read(cfg.max_upload_bytes + 1)
        return await run_in_threadpool(svc.decode_upload, data, pipe)

    async def index_page(request: Request):
        return HTMLResponse(page)

    async def info(request: Request):
        return JSONResponse({"images": len(svc.sources), "texts": len(svc.searcher.texts.data) if svc.searcher.texts
                             else 0, "vqa": svc.vqa is not None, "caption": svc.captioner is not None,
                             "model": svc.embedder.entry.name, "max_k": cfg.max_k,
                             "max_upload_bytes": cfg.max_upload_bytes})

    async def search_text(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise BadInput(400, 'send JSON: {"query": "...", "k": 10}') from None
        if not isinstance(body, dict):
            raise BadInput(400, 'send a JSON object: {"query": "...", "k": 10}')
        query, k = svc.check_query(body.get("query")), svc.check_k(body.get("k", 10))
        if svc.searcher.images is None:
            raise BadInput(404, "no image index is loaded")
        vector = await svc.batchers["text"].submit(query)
        return JSONResponse({"query": query, "results": svc.searcher.images.search(vector, k)[0]})

    async def search_image(request: Request):
        form = await form_of(request)
        k = svc.check_k(form.get("k", 10))
        target = form.get("target", "images")
        index = {"images": svc.searcher.images, "texts": svc.searcher.texts}.get(target)
        if index is None:
            raise BadInput(400 if target not in ("images", "texts") else 404, f"no {target!r} index is loaded")
        vector = await svc.batchers["image"].submit(await upload(form, svc.embedder))
        return JSONResponse({"target": target, "results": index.search(vector, k)[0]})

    async def vqa(request: Request):
        if svc.vqa is None:
            raise BadInput(404, "no VQA model is loaded (serve --vqa-model)")
        form = await form_of(request)
        question = svc.check_query(form.get("question"))
        answers = await svc.batchers["vqa"].submit((await upload(form, svc.vqa), question))
        return JSONResponse({"question": question, "answers": answers})

    async def caption(request: Request):
        if svc.captioner is None:
            raise BadInput(404, "no captioning model is loaded (serve --caption-model)")
        form = await form_of(request)
        return JSONResponse(await svc.batchers["caption"].submit(await upload(form, svc.captioner)))

    async def thumb(request: Request):
        data = await run_in_threadpool(svc.thumbnail, request.query_params.get("source"))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for batcher in svc.batchers.values():
            batcher.start()
        yield
        for batcher in svc.batchers.values():
            await batcher.stop()

    app = Starlette(routes=[Route("/", index_page), Route("/api/info", guarded(info)),
                            Route("/api/search/text", guarded(search_text), methods=["POST"]),
                            Route("/api/search/image", guarded(search_image), methods=["POST"]),
                            Route("/api/vqa", guarded(vqa), methods=["POST"]),
                            Route("/api/caption", guarded(caption), methods=["POST"]),
                            Route("/thumb", guarded(thumb))], lifespan=lifespan)
    app.state.service = svc
    return app


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 120.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread (tests, benchmarks, notebooks); yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve_main(argv: Optional[Sequence[str]] = None) -> int:
    """Serve an index and a model over HTTP with a search page (127.0.0.1 unless told otherwise)."""
    parser = argparse.ArgumentParser(prog="beit3-plugins serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="embed folder of images (indexed with beit3-plugins index)")
    parser.add_argument("--texts", help="embed folder of texts (indexed), for image -> text search")
    add_model_args(parser, "vqa-", required=False, what="VQA")
    parser.add_argument("--vqa-answers", help="answer list of the VQA model (answer2label.txt or JSON list)")
    add_model_args(parser, "caption-", required=False, what="captioning")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=32, help="1 switches dynamic batching off")
    parser.add_argument("--max-upload-mb", type=float, default=10.0)
    parser.add_argument("--max-pixels", type=int, default=40_000_000)
    args = parser.parse_args(argv)
    import uvicorn

    vqa = ModelSpec.from_args(args, "vqa_") if args.vqa_model else None
    cap = ModelSpec.from_args(args, "caption_") if args.caption_model else None
    cfg = ServeConfig(images=args.images, texts=args.texts, vqa=vqa, vqa_answers=args.vqa_answers, caption=cap,
                      device=args.device, dtype=args.dtype, batch_window_ms=args.batch_window_ms,
                      max_batch=args.max_batch, max_upload_bytes=int(args.max_upload_mb * 2 ** 20),
                      max_pixels=args.max_pixels)
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":  # `python -m beit3_plugins.search.serve ...` = `beit3-plugins serve ...`
    import sys

    sys.exit(serve_main())
