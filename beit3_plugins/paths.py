"""``beit3-plugins paths [NAME]``: where the installed package keeps what the framework commands are pointed
at (configs, fairseq's ``--user-dir``), the same for a checkout (editable install) and a wheel.

Found through the import system without executing the packages, so it needs no framework.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

__all__ = ["LOCATIONS", "package_dir", "location", "cli_main"]

# name -> (package, folder inside it in an installed wheel, the same folder in a checkout, what it is for).
# The checkout column follows setup.py's DATA_PACKAGES: an editable install maps config trees, it does not
# copy them.
LOCATIONS: Dict[str, Tuple[str, str, str, str]] = {
    "fairseq-user-dir": ("beit3_plugins.pretraining", "fairseq_user_dir/beit3_mdm",
                         "pretraining/fairseq_user_dir/beit3_mdm",
                         "fairseq --user-dir (only needed with BEIT3_AUTOLOAD=0)"),
    "fairseq-configs": ("beit3_plugins.pretraining", "configs", "configs/pretrain",
                        "fairseq-hydra-train --config-dir (beit3_tiny_cpu, beit3_base_ablation, ...)"),
    "mmseg-configs": ("beit3_plugins.segmentation", "configs", "configs", "mim train mmseg <dir>/ade20k_beit3.py"),
    "detection-configs": ("beit3_plugins.detection", "", "detection",
                          "--config-file <dir>/cascade_beit3.yaml (detection/cascade_beit3.yaml also resolves)"),
}


def package_dir(name: str) -> Path:
    """The folder of the regular package ``name``, found without executing it (only ``beit3_plugins``)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def location(key: str) -> Path:
    """Where ``key`` of :data:`LOCATIONS` is: inside the installed package, else in the checkout."""
    package, installed, checkout, _ = LOCATIONS[key]
    candidate = package_dir(package) / installed
    if candidate.exists():
        return candidate
    return package_dir("beit3_plugins").parent / checkout


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="beit3-plugins paths", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", choices=sorted(LOCATIONS), help="print only this path")
    args = parser.parse_args(argv)
    if args.name:
        print(location(args.name))
        return 0
    for key, (_, _, _, use) in LOCATIONS.items():
        print(f"{key:<18} {location(key)}\n{'':<18} {use}")
    return 0
