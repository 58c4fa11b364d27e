"""The search service on 127.0.0.1: JSON search by text and by uploaded image, and every kind of bad input a
4xx with a clear message while the server keeps answering."""
import io
import os
import shutil

import pytest
import requests
from PIL import Image

from beit3_plugins.search.serve import ServeConfig, create_app, serving

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def served(indexed_world, tmp_path_factory):
    """The service over a copy of the indexed world whose image folder the test may tamper with."""
    images, texts = indexed_world
    with serving(create_app(ServeConfig(images=str(images), texts=str(texts), max_upload_bytes=1 << 20,
                                        max_pixels=4_000_000))) as url:
        yield url, images


def _png(size=(64, 64), colour=(200, 30, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _ok(url):
    r = requests.post(url + "/api/search/text", json={"query": "a red circle", "k": 3}, timeout=60)
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    return r.json()


def test_search_by_text_and_by_image_and_thumbnails(served, world_captions):
    url, _ = served
    path, captions = next(iter(world_captions.items()))
    assert "<html" in requests.get(url + "/", timeout=30).text
    info = requests.get(url + "/api/info", timeout=30).json()
    assert info["images"] == len(world_captions) and info["texts"] > 0
    body = _ok(url)
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    with open(path, "rb") as handle:
        r = requests.post(url + "/api/search/image", files={"image": ("x.jpg", handle, "image/jpeg")},
                          data={"k": "2"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["source"] == path
    with open(path, "rb") as handle:
        r = requests.post(url + "/api/search/image", files={"image": ("x.jpg", handle)},
                          data={"k": "5", "target": "texts"}, timeout=60)
    assert r.status_code == 200 and all("caption" in h for h in r.json()["results"])
    thumb = requests.get(url + "/thumb", params={"source": path}, timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


def test_bad_uploads_are_4xx_and_the_server_keeps_serving(served):
    url, _ = served
    cases = [
        ({"image": ("notes.txt", b"just some text", "text/plain")}, 415, "not an image"),
        ({"image": ("empty.png", b"", "image/png")}, 400, "empty"),
        ({"image": ("big.png", _png((3000, 2000)), "image/png")}, 413, "pixels"),          # 6 MP > 4 MP
        ({"image": ("huge.bin", b"\0" * (2 << 20), "image/png")}, 413, "bytes"),         # 2 MiB > 1 MiB
        ({"image": ("cut.png", _png()[:60], "image/png")}, 400, "cannot"),
    ]
    for files, status, words in cases:
        r = requests.post(url + "/api/search/image", files=files, timeout=60)
        assert r.status_code == status, (files["image"][0], r.status_code, r.text)
        assert words in r.json()["error"], r.json()
    # a decompression bomb: a 20000 x 20000 PNG of ~100 KB is refused from its header, never decoded
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < (1 << 20)
    r = requests.post(url + "/api/search/image", files={"image": ("bomb.png", bomb.getvalue())}, timeout=60)
    assert r.status_code == 413 and "400000000 pixels" in r.json()["error"]
    r = requests.post(url + "/api/search/image", data={"k": "3"}, timeout=60)
    assert r.status_code == 400 and "image" in r.json()["error"]
    _ok(url)


def test_bad_queries_are_4xx(served):
    url, _ = served
    for body, words in (({"query": ""}, "empty"), ({"query": "   "}, "empty"), ({"query": "x" * 501}, "at most 500"),
                        ({"query": 3}, "empty"), ({"query": "a circle", "k": 0}, "between"),
                        ({"query": "a circle", "k": "many"}, "integer")):
        r = requests.post(url + "/api/search/text", json=body, timeout=60)
        assert r.status_code == 400 and words in r.json()["error"], (body, r.text)
    r = requests.post(url + "/api/search/text", data="not json", timeout=60)
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = requests.post(url + "/api/vqa", files={"image": ("a.png", _png())}, data={"question": "what?"}, timeout=60)
    assert r.status_code == 404 and "--vqa-model" in r.json()["error"]
    _ok(url)


def test_thumbnails_never_leave_the_indexed_sources(served, world_captions, tmp_path):
    url, images = served
    path = next(iter(world_captions))
    folder = os.path.dirname(path)
    for source in ("../../etc/passwd", "/etc/passwd", os.path.join(folder, "..", "dataset_coco.json"),
                   os.path.join(folder, "not_indexed.jpg"), ""):
        r = requests.get(url + "/thumb", params={"source": source}, timeout=30)
        assert r.status_code in (400, 403), (source, r.status_code)
        assert "indexed" in r.json()["error"] or "source" in r.json()["error"]
    # an indexed file replaced by a symlink to a file outside the indexed folder is refused
    victim = list(world_captions)[-1]
    secret = tmp_path / "secret.jpg"
    shutil.copy(victim, secret)
    backup = tmp_path / "backup.jpg"
    shutil.move(victim, backup)
    try:
        os.symlink(secret, victim)
        r = requests.get(url + "/thumb", params={"source": victim}, timeout=30)
        assert r.status_code == 403 and "outside the indexed folders" in r.json()["error"]
    finally:
        os.unlink(victim)
        shutil.move(backup, victim)
    assert requests.get(url + "/thumb", params={"source": path}, timeout=30).status_code == 200
    _ok(url)
