"""Demo stage: build the tiny backbones through the registry and run every mode on world images.

Shows the public API a user starts from; writes ``<out>/metrics.json`` with shapes and timings.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from beit3_plugins.backbones import build_backbone, to_released_state_dict
from beit3_plugins.data.images import load_image
from beit3_plugins.registry import BACKBONES


def load_images(world: Path, size: int, count: int = 8) -> torch.Tensor:
    files = sorted((world / "imagenet" / "train").rglob("*.JPEG"))[:count]
    arrays = [np.asarray(load_image(f).resize((size, size)), dtype=np.float32) / 127.5 - 1 for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    metrics = {}
    for name in ("beit3_tiny", "vlmo_tiny"):
        model = BACKBONES.build(name).eval()
        images = load_images(Path(args.world), model.cfg.img_size)
        ids = torch.randint(4, 300, (images.shape[0], 12))
        start = time.time()
        with torch.no_grad():
            shapes = {
                "vision": tuple(model.forward_vision(images).hidden.shape),
                "text": tuple(model.forward_text(ids).hidden.shape),
                "fused": tuple(model.forward_fused(images, ids).hidden.shape),
            }
        metrics[f"{name}_params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        metrics[f"{name}_ms_3_modes"] = (time.time() - start) * 1000
        print(f"[stage] {name}: {shapes}")
    # a released-layout checkpoint written and read back, as the plugins load them
    model = BACKBONES.build("beit3_tiny")
    torch.save({"model": to_released_state_dict(model)}, out / "beit3_tiny_released.pth")
    again = build_backbone("beit3_tiny", checkpoint=str(out / "beit3_tiny_released.pth"))
    metrics["released_keys_loaded"] = len(again.load_report.loaded)
    print(f"[stage] {again.load_report.summary()}")
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics}, indent=1))


if __name__ == "__main__":
    main()
