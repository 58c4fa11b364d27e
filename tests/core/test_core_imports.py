"""The core imports no framework; each adapter pulls in only its own and names its extra when missing."""
import subprocess
import sys

import pytest

FRAMEWORKS = ("fairseq", "detectron2", "mmseg", "mmdet", "mmcv", "mmengine", "hydra")
CORE = ("beit3_plugins", "beit3_plugins.registry", "beit3_plugins.backbones", "beit3_plugins.checkpoint",
        "beit3_plugins.tokenizer", "beit3_plugins.data", "beit3_plugins.transforms")


def run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.subprocess
def test_core_modules_import_no_framework():
    code = (f"import sys\nfor m in {CORE!r}: __import__(m)\n"
            f"print(sorted(f for f in {FRAMEWORKS!r} if f in sys.modules))")
    result = run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_beit3_plugins_is_torch_free():
    result = run("import sys, beit3_plugins; print('torch' in sys.modules)")
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("adapter, framework, extra", [
    ("beit3_plugins.detection", "detectron2", "detectron2"),
    ("beit3_plugins.segmentation", "mmseg", "mmseg"),
    ("beit3_plugins.pretraining.fairseq_plugin", "fairseq", "fairseq"),
])
def test_adapter_without_its_framework_names_the_extra(adapter, framework, extra):
    code = f"import sys\nsys.modules[{framework!r}] = None\nimport {adapter}"
    result = run(code)
    assert result.returncode != 0
    assert f"beit3-plugins[{extra}]" in result.stderr, result.stderr[-2000:]
