"""Import guard for framework adapters: a missing framework fails with the extra that installs it."""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingFrameworkError(ImportError):
    pass


def require(module: str, extra: str, adapter: str) -> ModuleType:
    """Import ``module`` or raise an error telling how to install the ``extra`` the adapter needs."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingFrameworkError(
            f"{adapter} needs {module!r}, which is not importable ({exc}). Install it with "
            f"`pip install 'beit3-plugins[{extra}]'` or run `make setup` (tools/setup_env.sh) for the whole stack."
        ) from exc
