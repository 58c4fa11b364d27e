"""Repack the upstream detectron2 snapshot published as ``sal-detectron2`` into a pure-Python wheel.

Why: detectron2 is not on PyPI under its own name, and the only usable copy ships a ``_C`` extension
built for Python 3.10 / torch 2.3 plus a top-level ``tools`` package that would shadow ours. We drop
both, rename the distribution to ``detectron2``, mark it ``py3-none-any``, fix two numpy-2
incompatibilities, and declare the dependencies detectron2 really needs. Usage:
``python tools/repack_detectron2.py <sal_detectron2-0.7.2-*.whl> <output-dir>``.
"""
from __future__ import annotations

import hashlib
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

# sha256 of sal_detectron2-0.7.2-cp310-none-any.whl as published; any other file is refused.
EXPECTED_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"

# numpy 2 rejects ``copy=False`` where a copy is needed; ``asarray`` has the intended meaning.
NUMPY2_FIXES = {
    "detectron2/evaluation/sem_seg_evaluation.py": [
        ("np.array(Image.open(f), copy=copy, dtype=dtype)", "np.asarray(Image.open(f), dtype=dtype)"),
    ],
    "detectron2/layers/mask_ops.py": [("np.array(mask, copy=False)", "np.asarray(mask)")],
}
# Bumped whenever the repacking changes, so that a wheel cached by an older recipe is not reused.
BUILD_NUMBER = "2"
EXTRA_REQUIRES = ["fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10", "timm", "shapely"]


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(src: str, out_dir: str) -> None:
    src_path = pathlib.Path(src)
    digest = sha256(src_path)
    if digest != EXPECTED_SHA256:
        sys.exit(f"refusing {src_path.name}: sha256 {digest} != expected {EXPECTED_SHA256}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = pathlib.Path(tmp)
        subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", tmp, str(src_path)], check=True)
        (unpacked,) = tmp_path.iterdir()
        for so in (unpacked / "detectron2").glob("_C*.so"):
            so.unlink()
        shutil.rmtree(unpacked / "tools", ignore_errors=True)
        for rel, subs in NUMPY2_FIXES.items():
            path = unpacked / rel
            text = path.read_text()
            for old, new in subs:
                if old not in text:
                    sys.exit(f"{rel}: expected code not found; the wheel is not the known snapshot")
                text = text.replace(old, new)
            path.write_text(text)
        (old_info,) = unpacked.glob("*.dist-info")
        new_info = unpacked / "detectron2-0.7.2.dist-info"
        old_info.rename(new_info)
        (new_info / "top_level.txt").write_text("detectron2\n")
        (new_info / "WHEEL").write_text(
            "Wheel-Version: 1.0\nGenerator: beit3-plugins repack\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        meta = (new_info / "METADATA").read_text()
        meta = re.sub(r"^Name:.*$", "Name: detectron2", meta, count=1, flags=re.M)
        meta = re.sub(r"^Requires-Dist: numpy.*\n", "Requires-Dist: numpy\n", meta, flags=re.M)
        meta = re.sub(r"^Requires-Python:.*\n", "", meta, flags=re.M)
        # the new requirements must go among the headers, before the blank line that opens the description
        head, sep, body = meta.rstrip("\n").partition("\n\n")
        head += "".join(f"\nRequires-Dist: {req}" for req in EXTRA_REQUIRES)
        (new_info / "METADATA").write_text(head + "\n" + (sep + body + "\n" if body else ""))
        (new_info / "RECORD").unlink()
        final_dir = tmp_path / "detectron2-0.7.2"
        unpacked.rename(final_dir)
        pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "wheel", "pack", "--build-number", BUILD_NUMBER, "-d", out_dir,
                        str(final_dir)], check=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
