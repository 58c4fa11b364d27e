"""A regular (non-editable) install ships the trainer's Hydra config tree and the mmseg configs, declared as
packages (the build prints no setuptools BuildBackendWarning).

The wheel is built from a copy of the source tree (so no ``build/`` lands in the checkout), installed
into a throwaway ``--target`` directory without dependencies, and a fresh interpreter that imports the
package from there (not from the editable checkout) composes a task config; ``mim train mmseg`` then runs
two iterations of the installed tiny ADE20K config (``_base_`` files resolved next to it, the adapter
imported from the installed copy).
"""
import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

REPO = Path(__file__).resolve().parents[2]
# every folder setup.py maps (MAPPED), read from setup.py so that a new layer cannot be left out of the copy
_MAPPED = next(ast.literal_eval(node.value) for node in ast.walk(ast.parse((REPO / "setup.py").read_text()))
               if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MAPPED")
SOURCES = ["setup.py", "beit3_plugins", "configs", *_MAPPED.values()]


def test_wheel_ships_vl_and_mmseg_configs_and_both_run(tmp_path, data_world):
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
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                            "-w", str(wheels), str(src)], cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    # every shipped folder is a declared package: setuptools has nothing to warn about (it lists each
    # undeclared data folder as a BuildBackendWarning and may stop shipping them)
    log = build.stdout + build.stderr
    assert "BuildBackendWarning" not in log and "absent from the `packages`" not in log, \
        [line for line in log.splitlines() if "Warning" in line][:10]
    wheel = next(wheels.glob("beit3_plugins-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"beit3_plugins/pipelines/__init__.py", "beit3_plugins/zoo/beit3_release.py"} <= names
    for rel in ("vl_train.yaml", "task/nlvr2.yaml", "model/beit3_tiny.yaml", "preset/cpu_tiny.yaml"):
        assert f"beit3_plugins/vl_tasks/configs/{rel}" in names, sorted(n for n in names if "configs" in n)
    for rel in ("ade20k_beit3.py", "ade20k_beit3_tiny.py", "_base_/seg_runtime.py", "_base_/seg_ade20k.py"):
        assert f"beit3_plugins/segmentation/configs/{rel}" in names, sorted(n for n in names if "configs" in n)
    assert "beit3_plugins/pretraining/configs/beit3_tiny_cpu.yaml" in names

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

    from beit3_plugins.segmentation.mim_runs import read_scalars, run_mim

    installed = target / "beit3_plugins" / "segmentation" / "configs" / "ade20k_beit3_tiny.py"
    work = tmp_path / "seg"
    proc = run_mim("train", installed, work, timeout=300,
                   cfg_options=["train_cfg.max_iters=2", "train_cfg.val_interval=1000",
                                "default_hooks.checkpoint.interval=1000", "train_dataloader.batch_size=2",
                                "train_dataloader.dataset.indices=2"],
                   env={"PYTHONPATH": str(target), "ADE20K_ROOT": str(data_world[1].path("ade_root"))})
    assert proc.returncode == 0, proc.log[-3000:]
    assert [r for r in read_scalars(work) if "loss" in r], proc.log[-3000:]
