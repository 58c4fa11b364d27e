"""beit3-plugins: the BEiT-3 family (BEiT-3, VLMo, VL-BEiT) as plugins for fairseq, detectron2,
mmsegmentation and vision-language task training.

One mapping rule: a top-level folder ``X/`` of the repository installs as ``beit3_plugins.X`` (the ``MAPPED``
dict below; ``beit3_plugins/`` itself is the core), so nothing claims a generic top-level name:

    beit3_plugins/  -> beit3_plugins             (core: registry, checkpoint I/O, tokenizer, data)
    backbones/      -> beit3_plugins.backbones
    pretraining/    -> beit3_plugins.pretraining (objectives, masking, VQ-KD, data + the fairseq adapter)
    detection/      -> beit3_plugins.detection   (detectron2 adapter)
    segmentation/   -> beit3_plugins.segmentation (mmsegmentation adapter)
    vl_tasks/       -> beit3_plugins.vl_tasks
    pipelines/      -> beit3_plugins.pipelines   (inference pipelines + `beit3-plugins predict`)
    search/         -> beit3_plugins.search      (embed -> FAISS index -> search service)
    reproduction/   -> beit3_plugins.reproduction (published tables, cells, `beit3-plugins benchmark`)

Config trees stay user-visible under ``configs/`` and install as data packages (``DATA_PACKAGES``) beside
the code that reads them, so a wheel install has them too.

``beit3_plugins_autoload.pth`` goes to site-packages with both a wheel and an editable install (``build_py``
and ``editable_wheel`` below): fairseq has no plugin entry points, and this file lets ``fairseq-train --task
beit3_mdm`` work with no ``--user-dir`` (``beit3_plugins/autoload.py`` says how and what it costs).
"""
import os
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

MAPPED = {"backbones": "backbones", "pretraining": "pretraining", "detection": "detection",
          "segmentation": "segmentation", "vl_tasks": "vl_tasks",
          "pipelines": "pipelines", "search": "search", "reproduction": "reproduction"}
# Data-only packages: config trees stay user-visible in configs/ and are installed next to their adapter so that
# a regular (non-editable) install finds them: the VL trainer's Hydra tree as beit3_plugins/vl_tasks/configs/,
# the mmseg configs (configs/ade20k_*.py + configs/_base_/) as beit3_plugins/segmentation/configs/ (for
# `mim train mmseg <that folder>/ade20k_beit3.py`), the fairseq-hydra-train yamls as
# beit3_plugins/pretraining/configs/, the detectron2 LazyConfigs as beit3_plugins/detection/configs/, the
# reproduction layer's zero-shot class names / prompt templates as beit3_plugins/reproduction/data/.
# Each is declared with every subfolder (configs/_base_, configs/vl_tasks/task, ...) as a package of its own and
# ships the files matching its globs, so the wheel holds them by declaration (setuptools warns about, and may
# one day drop, data in folders that are not declared packages).
DATA_PACKAGES = {"beit3_plugins.vl_tasks.configs": ("configs/vl_tasks", ["*.yaml"]),
                 "beit3_plugins.segmentation.configs": ("configs", ["*.py"]),
                 "beit3_plugins.pretraining.configs": ("configs/pretrain", ["*.yaml"]),
                 "beit3_plugins.detection.configs": ("detection/configs", ["*.py"]),
                 "beit3_plugins.reproduction.data": ("reproduction/data", ["*.json"]),
                 # fairseq's --user-dir folder (`beit3-plugins paths fairseq-user-dir`), imported top-level by fairseq
                 "beit3_plugins.pretraining.fairseq_user_dir": ("pretraining/fairseq_user_dir", ["*.py"])}
# The package's own layers declare their child registries under the plugin entry-point group, exactly as a
# third-party plugin does; the root registries in beit3_plugins/registry.py find them without naming them.
LAYER_REGISTRIES = ["beit3_plugins.backbones=beit3_plugins.backbones.registry",
                    "beit3_plugins.pretraining=beit3_plugins.pretraining.registry",
                    "beit3_plugins.vl_tasks=beit3_plugins.vl_tasks.registry"]


def _packages():
    packages = find_packages(include=["beit3_plugins", "beit3_plugins.*"])
    package_dir = {"beit3_plugins": "beit3_plugins"}
    for name, folder in MAPPED.items():
        package_dir[f"beit3_plugins.{name}"] = folder
        packages.append(f"beit3_plugins.{name}")
        packages += [f"beit3_plugins.{name}.{sub}" for sub in find_packages(where=folder)]
    package_data = {"beit3_plugins.detection": ["*.yaml"], "beit3_plugins.search": ["page.html"]}
    data_folders = {os.path.normpath(folder) for folder, _ in DATA_PACKAGES.values()}
    for name, (folder, globs) in DATA_PACKAGES.items():
        package_dir[name] = folder
        for here, subfolders, _ in os.walk(folder):
            subfolders[:] = sorted(s for s in subfolders if s != "__pycache__"
                                   and os.path.normpath(os.path.join(here, s)) not in data_folders)
            sub = os.path.relpath(here, folder)
            package = name if sub == "." else name + "." + sub.replace(os.sep, ".")
            packages.append(package)
            package_data[package] = list(globs)
    return packages, package_dir, package_data


PACKAGES, PACKAGE_DIR, PACKAGE_DATA = _packages()

PTH_NAME = "beit3_plugins_autoload.pth"  # sorts after setuptools' __editable__*.pth, which must run first
PTH_LINE = "import beit3_plugins.autoload; beit3_plugins.autoload.install()\n"


class BuildPyWithPth(build_py):
    """A wheel's root is site-packages: the .pth file is written there beside the packages."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            Path(self.build_lib, PTH_NAME).write_text(PTH_LINE)


CMDCLASS = {"build_py": BuildPyWithPth}
try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64 installs editables through `develop`, without the autoload
    editable_wheel = None
if editable_wheel is not None:
    class EditableWheelWithPth(editable_wheel):
        """An editable wheel holds only setuptools' own path hooks: add the .pth file to its root too."""

        def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
            outputs = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
            Path(unpacked_wheel, PTH_NAME).write_text(PTH_LINE)
            return outputs

    CMDCLASS["editable_wheel"] = EditableWheelWithPth

TORCH = ["torch>=2.1", "torchvision"]
EXTRAS = {
    "fairseq": ["fairseq-fixed==0.12.3.1", "hydra-core==1.3.2", "omegaconf==2.3.0", "webdataset>=1.0"],
    "detectron2": ["detectron2==0.7.2", "pycocotools", "opencv-python-headless", "shapely"],
    "mmseg": ["mmengine==0.10.7", "mmcv==2.1.0", "mmdet==3.3.0", "mmsegmentation==1.2.2", "openmim==0.3.9",
              "ftfy", "regex"],
    "vl": ["hydra-core>=1.3", "omegaconf>=2.3", "tensorboard", "pycocotools", "pycocoevalcap"],
    "hub": ["huggingface_hub"],
    # embed -> index -> serve (docs/search.md); selenium drives Debian's chromium in the browser test
    "search": ["faiss-cpu>=1.8", "pyarrow>=14", "starlette>=0.40", "uvicorn>=0.30", "python-multipart>=0.0.9"],
    # ONNX export of the task models and its check with onnxruntime (pipelines/onnx_export.py)
    "onnx": ["onnx", "onnxruntime"],
    # transformers: its slow BertTokenizer is the reference the WordPiece tests compare with
    "test": ["pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "torchscale==0.3.0", "transformers>=4.40", "selenium>=4.20"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="beit3-plugins",
    version="0.1.0",
    description="BEiT-3 / VLMo / VL-BEiT Multiway Transformers as plugins for fairseq, detectron2, "
                "mmsegmentation and vision-language tasks",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    include_package_data=True,
package_data=PACKAGE_DATA,
    install_requires=TORCH + ["timm>=1.0.9", "sentencepiece", "tokenizers>=0.15", "numpy", "Pillow", "safetensors", "tqdm",
                              "omegaconf>=2.3",
                              "matplotlib"],
    extras_require=EXTRAS,
    cmdclass=CMDCLASS,
    entry_points={
        "console_scripts": [
            "beit3-plugins=beit3_plugins.cli:main",
        ],
        # Subcommands of layers above the core (beit3_plugins.cli names none of them itself).
        "beit3_plugins": LAYER_REGISTRIES,
        "beit3_plugins.commands": [
            "export-pretrained=beit3_plugins.pretraining.fairseq_plugin.export:cli_main",
            "make-shards=beit3_plugins.pretraining.make_shards:cli_main",
            "init-vlmo-from-beit=beit3_plugins.pretraining.init_vlmo:cli_main",
            "predict=beit3_plugins.pipelines.cli:predict_main",
            "embed=beit3_plugins.search.embed:cli_main",
            "index=beit3_plugins.search.index:index_main",
            "query=beit3_plugins.search.index:query_main",
            "serve=beit3_plugins.search.serve:serve_main",
            "save=beit3_plugins.pipelines.hub:save_cli",
            "push=beit3_plugins.pipelines.hub:push_cli",
            "export-onnx=beit3_plugins.pipelines.onnx_export:export_cli",
            "benchmark=beit3_plugins.reproduction.cli:benchmark_main",
        ],
    },
)
