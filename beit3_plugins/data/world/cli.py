"""``beit3-plugins make-world``: the command that writes a world with config overrides.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, Optional, Sequence

from .config import FORMATS, WorldConfig
from .generate import generate_world


__all__ = ['cli_main']

def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``beit3-plugins make-world OUT [--seed N] [--image-size PX] [--set field=value ...]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="beit3-plugins make-world", description=generate_world.__doc__)
    parser.add_argument("out_dir", help="directory to write the world into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None, help="VL/ImageNet image side in pixels")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every image/record count by this factor (e.g. 10 for a bigger world)")
    parser.add_argument("--formats", default=None, help=f"comma-separated subset of {','.join(FORMATS)}")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any WorldConfig field, e.g. --set det_image_size=256")
    args = parser.parse_args(argv)
    overrides: Dict[str, Any] = {"seed": args.seed}
    fields = {f.name: f for f in dataclasses.fields(WorldConfig)}
    defaults = WorldConfig()
    if args.scale != 1.0:
        for name in fields:
            if name.endswith(("_images", "_sets", "_per_class", "_lines")):
                overrides[name] = max(1, int(round(getattr(defaults, name) * args.scale)))
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.formats:
        overrides["formats"] = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            parser.error(f"--set expects FIELD=VALUE with FIELD in {sorted(fields)}, got {item!r}")
        current = getattr(defaults, name)
        overrides[name] = type(current)(value) if not isinstance(current, tuple) else tuple(value.split(","))
    try:
        cfg = WorldConfig(**overrides)
    except ValueError as exc:
        parser.error(str(exc))
    start = time.perf_counter()
    manifest = generate_world(args.out_dir, cfg)
    print(f"wrote world (seed {cfg.seed}) to {args.out_dir} in {time.perf_counter() - start:.1f}s")
    for key, value in manifest.counts.items():
        print(f"  {key}: {value}")
    return 0
