"""Shared fixtures. Session-scoped data is read-only: tests that damage files work on copies.

``make test`` runs the suite on two pytest-xdist workers (``-n 2 --dist loadfile``: a file's tests stay on one
worker, so its module fixtures are built once). Each worker and the commands its tests start use one OpenMP
thread, so the two workers share the two cores instead of four threads spinning against each other.
"""
import os
from collections import Counter

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def data_world(tmp_path_factory):
    """(root Path, WorldManifest) of a small synthetic world with every format (default WorldConfig)."""
    from beit3_plugins.data import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("data_world")
    return root, generate_world(root, WorldConfig(seed=0))


@pytest.fixture(scope="session")
def tiny_spm(data_world, tmp_path_factory):
    """Path of a 128-piece sentencepiece model (XLM-R id layout) trained on the world's text corpus."""
    from beit3_plugins.tokenizer import train_sentencepiece

    _, manifest = data_world
    return train_sentencepiece(manifest.path("text_corpus"), tmp_path_factory.mktemp("spm") / "tiny", 128)


@pytest.fixture(scope="session")
def world_shards(data_world):
    """{kind: brace pattern} of shards written into <world>/shards by ``beit3-plugins make-shards --world``
    (64 samples per shard), the layout configs/pretrain/beit3_tiny_cpu.yaml reads."""
    from beit3_plugins.pretraining.make_shards import make_world_shards

    world, _ = data_world
    return make_world_shards(world, world / "shards", per_shard=64)


CUDA_DRY_RUN = "BEIT3_CUDA_TESTS_ON_CPU"  # bench/device_check.sh --dry-run: run the cuda tests on the CPU


def cuda_tests_run() -> bool:
    import torch

    return torch.cuda.is_available() or os.environ.get(CUDA_DRY_RUN) == "1"


def _slow_files_first(items):
    """Files with the most ``slow`` tests first (in-file order kept): under ``--dist loadfile`` the long
    training files start early instead of leaving one worker busy at the end while the other idles."""
    slow = Counter(item.nodeid.split("::")[0] for item in items if "slow" in item.keywords)
    first_seen = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.nodeid.split("::")[0], index)
    items.sort(key=lambda item: (-slow[item.nodeid.split("::")[0]], first_seen[item.nodeid.split("::")[0]]))


def pytest_collection_modifyitems(config, items):
    """Slow files first under xdist; tests marked ``cuda`` are skipped (and counted as skipped) on a machine
    without an NVIDIA GPU, unless the device script's dry run asks for them on the CPU."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _slow_files_first(items)
    if cuda_tests_run():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is false)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu():
    """The device cuda-marked tests run on: the GPU, or the CPU in the device script's dry run."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
