"""The pipelines' shared world: random-weight twins of every kind of zoo entry served from a loopback
server (``zoo_twins``), a zoo cache of the test's own, and three small images."""
import os

import numpy as np
import pytest
from PIL import Image

from beit3_plugins import zoo

from zoo_server import ZooServer
from zoo_twins import make_twins


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_spm):
    root = tmp_path_factory.mktemp("zoo")
    cache = root / "cache"
    old = os.environ.get(zoo.CACHE_ENV)
    os.environ[zoo.CACHE_ENV] = str(cache)
    with ZooServer(root / "served") if (root / "served").mkdir() is None else None as server:
        refs = make_twins(root / "served", server.url, tiny_spm)
        rng = np.random.default_rng(0)
        images = []
        for i in range(3):
            path = root / f"img{i}.png"
            Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 56, 3), dtype=np.uint8)).save(path)
            images.append(str(path))
        yield {"refs": refs, "images": images, "server": server, "cache": cache, "spm": tiny_spm}
    if old is None:
        os.environ.pop(zoo.CACHE_ENV, None)
    else:
        os.environ[zoo.CACHE_ENV] = old
