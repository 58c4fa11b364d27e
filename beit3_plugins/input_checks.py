"""Input-data checks shared by the framework commands (detectron2, mmsegmentation, fairseq).

Each command lists the files and folders its config names and calls :func:`require_paths` before it builds
a model: a missing or partial dataset fails in a second with ONE message naming every missing path, the
setting that moves the data root (``DETECTRON2_DATASETS``, ``data_root``, the data directory argument) and
the ``beit3-plugins data check`` command, instead of a traceback from deep inside the framework after the
model is built. :func:`exit_on_missing_data` turns that error into the message and exit status 2 with no
traceback (``BEIT3_DEBUG=1`` shows it). Core layer: imports no framework.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, List, Sequence, Tuple

__all__ = ["MissingDataError", "require_paths", "exit_on_missing_data", "DATA_CHECK_COMMAND", "DEBUG_ENV",
           "MISSING_DATA_EXIT_CODE"]

DATA_CHECK_COMMAND = "beit3-plugins data check"
DEBUG_ENV = "BEIT3_DEBUG"
MISSING_DATA_EXIT_CODE = 2
SHOWN = 20  # missing paths listed in full (thousands of shards stay one screen)


class MissingDataError(FileNotFoundError):
    """Files or folders a command's config names are not on disk."""

    def __init__(self, what: str, missing: Sequence[str], root_setting: str) -> None:
        self.what, self.missing, self.root_setting = what, list(missing), root_setting
        shown = self.missing[:SHOWN]
        lines = [f"{what}: {len(self.missing)} input(s) not found:"] + [f"  missing: {m}" for m in shown]
        if len(self.missing) > len(shown):
            lines.append(f"  ... and {len(self.missing) - len(shown)} more")
        lines += [f"Set the data root with {root_setting}.",
                  f"Check a data root with `{DATA_CHECK_COMMAND} ROOT` (`{DATA_CHECK_COMMAND} --help`)."]
        super().__init__("\n".join(lines))

    def __str__(self) -> str:
        return self.args[0]


def require_paths(what: str, paths: Iterable[Tuple[str, str, str]], root_setting: str) -> None:
    """Raise :class:`MissingDataError` naming every ``(path, kind, role)`` that is not on disk.

    ``kind`` is ``"file"`` or ``"dir"``; ``role`` says what the path is for (``"dataset coco_2017_train:
    annotations"``) and is printed beside it.
    """
    missing: List[str] = []
    for path, kind, role in paths:
        ok = os.path.isdir(path) if kind == "dir" else os.path.isfile(path)
        if not ok:
            shown = str(Path(path)) + ("/" if kind == "dir" else "")
            entry = f"{shown} ({role})" if role else shown
            if entry not in missing:
                missing.append(entry)
    if missing:
        raise MissingDataError(what, missing, root_setting)


@contextlib.contextmanager
def exit_on_missing_data() -> Iterator[None]:
    """Around a command's main: a :class:`MissingDataError` prints its message and exits with status 2."""
    try:
        yield
    except MissingDataError as exc:
        if os.environ.get(DEBUG_ENV, "0") not in ("", "0"):
            raise
        sys.stderr.write(f"{exc}\n(traceback: {DEBUG_ENV}=1)\n")
        sys.stderr.flush()
        raise SystemExit(MISSING_DATA_EXIT_CODE) from None
