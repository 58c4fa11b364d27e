"""A regular (non-editable) install ships the trainer's Hydra config tree.

The wheel is built from a copy of the source tree (so no ``build/`` lands in the checkout), installed
into a throwaway ``--target`` directory without dependencies, and a fresh interpreter that imports the
package from there (not from the editable checkout) composes a task config.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["setup.py", "beit3_plugins", "backbones", "pretraining", "detection", "segmentation", "vl_tasks", "configs"]


def test_wheel_ships_vl_configs_and_composes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(src)], check=True, cwd=tmp_path)
    wheel = next(wheels.glob("beit3_plugins-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in ("vl_train.yaml", "task/nlvr2.yaml", "model/beit3_tiny.yaml", "preset/cpu_tiny.yaml"):
        assert f"beit3_plugins/vl_tasks/configs/{rel}" in names, sorted(n for n in names if "configs" in n)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, cwd=tmp_path)
    probe = (
        "import beit3_plugins.vl_tasks.train as t\n"
        "from pathlib import Path\n"
        f"site = Path({str(target)!r}).resolve()\n"
        "assert Path(t.__file__).resolve().is_relative_to(site), t.__file__\n"
        "assert t.CONFIG_DIR.resolve().is_relative_to(site), t.CONFIG_DIR\n"
        "cfg = t.compose_config(['task=nlvr2', 'model=beit3_tiny', 'preset=cpu_tiny', 'data.root=/x', 'data.tokenizer=/y'])\n"
        "assert cfg.task.name == 'nlvr2' and cfg.model.name == 'beit3_tiny' and cfg.task.image_size == 32, cfg\n"
        "print('OK', t.CONFIG_DIR)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert "OK" in out.stdout, out.stderr
