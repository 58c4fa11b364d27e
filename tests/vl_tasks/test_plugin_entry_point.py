"""Third-party task plugins: the example package registers ``shape_colors`` through the ``beit3_plugins``
entry point, trains with the library's trainer, and its zoo entry (entry point ``beit3_plugins.zoo``) runs as
its own pipeline (``shape-colors``), without a line of this repository changed.

The package is pip-installed into the venv from a temporary copy and uninstalled at teardown; the
checks run in fresh subprocesses so the entry-point metadata is read anew.
"""
import json
import os
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


def test_plugin_zoo_entry_runs_as_its_pipeline(installed_example, tmp_path):
    """The zoo lists the plugin's entry (task ``shape_colors``); the factory builds the plugin's model from it with
    one TASKS lookup, downloads the file (from a loopback mirror) and the plugin's pipeline answers with that
    model's own sigmoid outputs."""
    from zoo_server import ZooServer

    served = tmp_path / "served"
    served.mkdir()
    code = (
        "import json, os, sys, torch\n"
        "from PIL import Image\n"
        "from beit3_plugins.registry import BACKBONES\n"
        "from beit3_plugins.zoo import get_pretrained, list_pretrained\n"
        "from beit3_plugins.pipelines import pipeline, list_pipelines\n"
        "from beit3_plugins.pipelines.factory import build_task_model\n"
        "from beit3_plugins.transforms import build_image_transform\n"
        "entry = get_pretrained('shape_colors_beit3_tiny')\n"
        "assert list_pretrained(task='shape_colors') == ['shape_colors_beit3_tiny']\n"
        "torch.manual_seed(0)\n"
        "ref = build_task_model(entry, BACKBONES.build('beit3_tiny', **entry.backbone_overrides())).eval()\n"
        "assert type(ref).__name__ == 'ShapeColorsModel'\n"
        "for p in ref.color_head.parameters():\n    torch.nn.init.normal_(p, std=0.5)\n"
        "torch.save({'model': ref.state_dict()}, os.path.join(sys.argv[1], 'shape_colors_beit3_tiny.pt'))\n"
        "image = Image.new('RGB', (40, 30), (200, 30, 30))\n"
        "pipe = pipeline('shape-colors', model='shape_colors_beit3_tiny', device='cpu')\n"
        "pixels = build_image_transform('vl', train=False, image_size=224)(image)[None]\n"
        "with torch.no_grad():\n    want = ref.logits(pixels).sigmoid()[0].tolist()\n"
        "image.save(os.path.join(sys.argv[1], 'red.png'))\n"
        "from beit3_plugins.cli import main\n"
        "assert main(['predict', 'shape-colors', '--model', 'shape_colors_beit3_tiny', '--device', 'cpu',\n"
        "             '--image', os.path.join(sys.argv[1], 'red.png')]) == 0\n"
        "print(json.dumps({'got': pipe(image), 'want': want, 'pipelines': list_pipelines()}))\n"
    )
    with ZooServer(served) as server:
        env = dict(os.environ, BEIT3_PLUGINS_MIRROR=server.url, BEIT3_PLUGINS_CACHE=str(tmp_path / "cache"))
        res = subprocess.run([sys.executable, "-c", code, str(served)], capture_output=True, text=True, timeout=300,
                             cwd=str(REPO), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    cli, out = json.loads(lines[-2]), json.loads(lines[-1])
    assert "shape-colors" in out["pipelines"] and "vqa" in out["pipelines"]
    assert list(out["got"]) == ["red", "green", "blue", "yellow"]
    assert list(out["got"].values()) == pytest.approx(out["want"], abs=1e-5)
    assert cli["task"] == "shape-colors" and list(cli["result"][0].values()) == pytest.approx(out["want"], abs=1e-5)
    assert (tmp_path / "cache" / "shape_colors_beit3_tiny.pt").is_file()
