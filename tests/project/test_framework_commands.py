"""The three framework commands exactly as users type them, from a folder outside the checkout.

* ``fairseq-train --task beit3_mdm`` with no ``--user-dir``: the installed ``beit3_plugins_autoload.pth``
  makes fairseq's own tools (``fairseq-train``, ``fairseq-validate``, ``fairseq-hydra-train``) see the task,
  while a process that never imports fairseq imports neither fairseq nor torch; ``--user-dir`` at the folder
  ``beit3-plugins paths`` prints keeps working.
* With the dataset missing or partial, the detection trainer (``python -m beit3_plugins.detection.train``),
  ``mim train mmseg`` and ``fairseq-train`` print one message naming each missing path, the setting of the
  data root and ``beit3-plugins data check``, and exit with status 2, no traceback.

The same commands train on the data world in the slow runs that already exist (detection:
``test_detection_train`` from a temporary folder; segmentation: ``mim_runs.run_mim`` runs in the work dir;
fairseq: ``tests/support/fairseq_run.py`` with no user dir outside the checkout) and from a wheel installed
in a fresh venv (``tests/vl_tasks/test_vl_packaging.py``).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beit3_plugins.input_checks import DATA_CHECK_COMMAND, MISSING_DATA_EXIT_CODE
from beit3_plugins.paths import location

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}:{os.environ['PATH']}"}
ENV.pop("BEIT3_AUTOLOAD", None)
ENV.pop("BEIT3_DEBUG", None)


def _run(cmd, cwd, env=None, timeout=300):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env={**ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------- fairseq autoload
def test_an_unrelated_python_start_imports_no_framework(tmp_path):
    probe = ("import sys, json\n"
             "assert any(type(f).__name__ == 'FrameworkHooks' for f in sys.meta_path), sys.meta_path\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('fairseq', 'torch', 'numpy'))\n"
             "print('heavy:', heavy)\n")
    proc = _run([sys.executable, "-c", probe], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout, proc.stdout


def test_fairseq_tools_see_the_task_with_no_user_dir(tmp_path, tiny_spm):
    help_text = _run([BIN / "fairseq-train", "--task", "beit3_mdm", "--help"], tmp_path)
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    assert "--spm-model" in help_text.stdout and "--pair-data" in help_text.stdout
    validate = _run([BIN / "fairseq-validate", "--task", "vlmo_pretrain", "--help"], tmp_path)
    assert validate.returncode == 0 and "--whole-word-masking" in validate.stdout, validate.stderr[-2000:]
    # the installed recipe composes and fairseq sets up our task, which stops at its data check: the task is
    # registered (without it fairseq fails on the unknown task name) and nothing was built
    empty = tmp_path / "empty"
    empty.mkdir()
    hydra = _run([BIN / "fairseq-hydra-train", "--config-dir", location("fairseq-configs"), "--config-name",
                  "beit3_tiny_cpu", f"task.data={empty}", f"task.spm_model={tiny_spm}",
                  f"checkpoint.save_dir={tmp_path / 'ckpt'}"], tmp_path)
    _assert_one_clean_message(hydra, empty / "shards")


def test_user_dir_at_the_printed_folder_still_works(tmp_path):
    printed = _run([BIN / "beit3-plugins", "paths", "fairseq-user-dir"], tmp_path)
    assert printed.returncode == 0, printed.stderr
    user_dir = Path(printed.stdout.strip())
    assert (user_dir / "__init__.py").is_file() and user_dir == location("fairseq-user-dir")
    explicit = _run([BIN / "fairseq-train", "--user-dir", user_dir, "--task", "beit3_mdm", "--help"], tmp_path,
                    env={"BEIT3_AUTOLOAD": "0"})  # the hooks off: only the user dir registers the task
    assert explicit.returncode == 0 and "--spm-model" in explicit.stdout, explicit.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- missing data
def _assert_one_clean_message(proc, *expected):
    out = proc.stdout + proc.stderr
    assert proc.returncode == MISSING_DATA_EXIT_CODE, (proc.returncode, out[-3000:])
    assert "Traceback" not in out, out[-3000:]
    assert out.count("input(s) not found") == 1, out[-3000:]
    for text in (DATA_CHECK_COMMAND, *expected):
        assert str(text) in out, (text, out[-3000:])


def test_detection_without_coco_names_each_missing_file(tmp_path):
    empty = tmp_path / "datasets"
    empty.mkdir()
    (empty / "coco" / "train2017").mkdir(parents=True)  # partial: images of one split, no annotations
    proc = _run([sys.executable, "-m", "beit3_plugins.detection.train", "--config-file",
                 "detection/cascade_beit3.yaml", "OUTPUT_DIR", tmp_path / "out"], tmp_path,
                env={"DETECTRON2_DATASETS": str(empty)})
    _assert_one_clean_message(proc, "DETECTRON2_DATASETS", empty / "coco/annotations/instances_train2017.json",
                              empty / "coco/annotations/instances_val2017.json", empty / "coco/val2017")
    assert f"{empty / 'coco/train2017'}/" not in proc.stderr  # present: not listed
    assert not (tmp_path / "out").exists()  # nothing was built or written


def test_mim_train_without_ade20k_names_each_missing_folder(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    (ade / "images" / "training").mkdir(parents=True)  # partial: no annotations, no validation split
    config = location("mmseg-configs") / "ade20k_beit3_tiny.py"
    proc = _run([BIN / "mim", "train", "mmseg", config, "--launcher", "none", "--gpus", "0", "--work-dir",
                 tmp_path / "work"], tmp_path, env={"ADE20K_ROOT": str(ade)})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert out.count("input(s) not found") == 1, out[-3000:]
    for text in ("data_root", "ADE20K_ROOT", DATA_CHECK_COMMAND, ade / "annotations/training",
                 ade / "images/validation", ade / "annotations/validation"):
        assert str(text) in out, (text, out[-3000:])


def test_fairseq_train_without_its_data_names_each_missing_input(tmp_path):
    data = tmp_path / "data"
    (data / "imagenet" / "train").mkdir(parents=True)  # partial: images only
    proc = _run([BIN / "fairseq-train", data, "--task", "beit3_mdm", "--arch", "beit3_tiny", "--criterion",
                 "beit3_mdm", "--spm-model", "spm.model", "--pair-data", "shards/pairs-{00000..00001}.tar",
                 "--batch-size", "4", "--cpu", "--save-dir", tmp_path / "ckpt"], tmp_path)
    _assert_one_clean_message(proc, "the data directory", data / "spm.model", data / "text/corpus.txt",
                              data / "shards/pairs-00000.tar", data / "shards/pairs-00001.tar")
    assert f"{data / 'imagenet/train'}/" not in proc.stderr
