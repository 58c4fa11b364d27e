"""A checkpoint whose unpickling runs code (creates a marker file): the payload every security test refuses."""
from pathlib import Path


class _Payload:
    """Unpickling this object calls ``pathlib.Path(marker).touch()``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def write_evil_checkpoint(path: Path, marker: Path) -> Path:
    """A file torch.load(weights_only=False) would execute: a state dict whose value runs ``touch``."""
    import torch

    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, path, pickle_protocol=2)
    return path
