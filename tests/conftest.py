"""Shared fixtures. Session-scoped data is read-only: tests that damage files work on copies."""
import pytest


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
    import os

    import torch

    return torch.cuda.is_available() or os.environ.get(CUDA_DRY_RUN) == "1"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped (and counted as skipped) on a machine without an NVIDIA GPU, unless
    the device script's dry run asks for them on the CPU."""
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
