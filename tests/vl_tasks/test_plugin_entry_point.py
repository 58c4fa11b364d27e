"""Third-party task plugins: the example package registers ``shape_colors`` through the ``beit3_plugins``
entry point and trains with the library's trainer, without a line of this repository changed.

The package is pip-installed into the venv from a temporary copy and uninstalled at teardown; the
checks run in fresh subprocesses so the entry-point metadata is read anew.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "beit3_plugin_example"


def _pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    src = tmp_path_factory.mktemp("plugin") / "beit3_plugin_example"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    res = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src))
    assert res.returncode == 0, res.stdout + res.stderr
    yield src
    res = _pip("uninstall", "-y", "-q", "beit3-plugin-example")
    assert res.returncode == 0, res.stdout + res.stderr


def _python(code: str, **kw):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=str(REPO), **kw)


def test_entry_point_registers_lazily(installed_example):
    code = (
        "import sys\n"
        "from beit3_plugins.registry import TASKS, HEADS\n"
        "assert 'beit3_plugin_example.shape_colors' not in sys.modules  # nothing imported yet\n"
        "names = TASKS.names()\n"
        "assert 'beit3_plugin_example.shape_colors' in sys.modules\n"
        "print(sorted(names)); print('multi_label_head' in HEADS.names())\n"
        "from beit3_plugins.registry import UnknownComponentError\n"
        "try:\n    TASKS.get('shape_color')\nexcept UnknownComponentError as e:\n    print('ERR', e)\n"
    )
    res = _python(code)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "'shape_colors'" in lines[0] and "'vqa'" in lines[0]
    assert lines[1] == "True"
    assert "Did you mean 'shape_colors'" in lines[2]


def test_plugin_task_trains_with_the_library_trainer(installed_example, data_world, tiny_spm, tmp_path):
    root, _ = data_world
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "beit3_plugins.vl_tasks.train", "hydra.searchpath=[pkg://beit3_plugin_example.configs]",
           "task=shape_colors", "model=beit3_tiny", "preset=cpu_tiny", f"data.root={root}", f"data.tokenizer={tiny_spm}",
           f"train.output_dir={out}", "train.epochs=30", "train.batch_size=8", "train.tensorboard=false", "train.eval_split=train"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "shape_colors"
    # baseline: answering every colour with its majority value over the training images
    from beit3_plugins.data import read_karpathy

    records = read_karpathy(Path(root) / "coco" / "dataset_coco.json", Path(root) / "coco", "train")
    present = [[c in " ".join(r.captions).split() for c in ("red", "green", "blue", "yellow")] for r in records]
    majority = 100 * sum(max(sum(col), len(col) - sum(col)) for col in zip(*present)) / (4 * len(present))
    assert metrics["eval"]["label_accuracy"] >= majority + 15.0, (metrics, majority)
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "curves.png").is_file()
