"""A regular (non-editable) install ships the configs the framework commands name, declared as packages (the
build prints no setuptools BuildBackendWarning), and runs them.

The wheel is built from a copy of the source tree (so no ``build/`` lands in the checkout) and installed
without dependencies into the site-packages of a fresh venv, which reads the frameworks from this venv's
site-packages as a plain path entry (so this checkout's editable install stays inactive there). From a
folder outside the checkout, that venv's interpreter: imports the package from the wheel, with the fairseq
autoload ``.pth`` active and no framework imported; lists ``fairseq-train --task beit3_mdm``'s options with
no ``--user-dir``; composes a VL task config; trains the detector for two iterations as
``python -m beit3_plugins.detection.train`` with the installed yacs config; and ``mim train mmseg`` runs two
iterations of the installed tiny ADE20K config (``_base_`` files resolved next to it, the adapter imported
from the installed copy).
"""
import ast
import os
import shutil
import subprocess
import sys
import sysconfig
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
    assert {"beit3_plugins/pretraining/configs/beit3_tiny_cpu.yaml", "beit3_plugins_autoload.pth",
            "beit3_plugins/pretraining/fairseq_user_dir/beit3_mdm/__init__.py",
            "beit3_plugins/detection/cascade_beit3_tiny.yaml", "beit3_plugins/detection/train.py"} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, cwd=tmp_path)
    python = venv / "bin" / "python"
    target = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, cwd=tmp_path)
    (target / "zz_frameworks.pth").write_text(sysconfig.get_path("purelib") + "\n")  # torch, fairseq, ... only
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    start = ("import sys\n"
             "import beit3_plugins\n"
             f"assert beit3_plugins.__file__.startswith({str(target)!r}), beit3_plugins.__file__\n"
             "assert any(type(f).__name__ == 'FrameworkHooks' for f in sys.meta_path), sys.meta_path\n"
             "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'fairseq')]\n")
    subprocess.run([python, "-c", start], check=True, cwd=cwd)
    fairseq_help = subprocess.run([python, "-m", "fairseq_cli.train", "--task", "beit3_mdm", "--help"], cwd=cwd,
                                  capture_output=True, text=True)
    assert fairseq_help.returncode == 0 and "--spm-model" in fairseq_help.stdout, fairseq_help.stderr[-2000:]
    world = data_world[0]
    detection = subprocess.run(
        [python, "-m", "beit3_plugins.detection.train", "--config-file", "detection/cascade_beit3_tiny.yaml",
         "DATASETS.ROOT", str(world), "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()",
         "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(tmp_path / "det")], cwd=cwd, capture_output=True,
        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert detection.returncode == 0, detection.stderr[-3000:]
    assert (tmp_path / "det" / "model_final.pth").is_file()
    assert f"{target}/beit3_plugins/detection/cascade_beit3_tiny.yaml" in detection.stdout + detection.stderr
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
    out = subprocess.run([python, "-c", probe], check=True, cwd=cwd, capture_output=True, text=True)
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
