"""Hooks into the frameworks' own command-line tools, installed at interpreter start by a ``.pth`` file.

fairseq has no plugin entry points: its registries hold what was imported before its parser is built
(``--user-dir`` is its only hook). The installed ``beit3_plugins_autoload.pth`` (written by ``setup.py`` for
wheel and editable installs) runs :func:`install` at every interpreter start, which appends one finder to
``sys.meta_path`` and imports nothing else: no fairseq, no torch, no registry. The finder answers only for
the modules in :data:`HOOKS`; it lets such a module import as usual and, once it has initialised, runs the
hook:

* ``fairseq``: imports ``beit3_plugins.pretraining.fairseq_plugin``, which registers ``beit3_mdm`` /
  ``vlmo_pretrain``, ``beit3_pretrain`` and the rest, so ``fairseq-train``, ``fairseq-hydra-train`` and
  ``fairseq-validate`` see them with no ``--user-dir``. If the plugin fails to import (a missing extra),
  fairseq still works and one line on stderr says why our task is missing.
* ``mim.cli``: ``mim train`` / ``mim test`` run mmseg's script in a child and turn any failure into a
  ``CalledProcessError`` traceback. When the child stopped at our data check (exit status
  :data:`~beit3_plugins.input_checks.MISSING_DATA_EXIT_CODE`, its one message already printed), mim reports a
  one-line failure instead and exits non-zero; every other failure is left as mim shows it.

``BEIT3_AUTOLOAD=0`` turns the hooks off. Cost at start-up: ``python -m bench.startup`` (docs/pretraining.md).
"""
import os
import sys

ENV = "BEIT3_AUTOLOAD"


def _register_fairseq_plugin(module):
    try:
        __import__("beit3_plugins.pretraining.fairseq_plugin")
    except Exception as exc:  # fairseq must keep working without our task
        sys.stderr.write(f"beit3_plugins: fairseq task beit3_mdm not registered ({type(exc).__name__}: "
                         f"{exc}); {ENV}=0 silences this\n")


def _quiet_mim_data_check(module):
    """mim compiles each command file into a fresh namespace (``MIM.get_command``); wrap the ``train`` /
    ``test`` function its ``cli`` callback calls from that namespace."""
    import subprocess

    from beit3_plugins.input_checks import MISSING_DATA_EXIT_CODE

    def quiet(run, name):
        def wrapped(*args, **kwargs):
            try:
                return run(*args, **kwargs)
            except subprocess.CalledProcessError as exc:
                if exc.returncode != MISSING_DATA_EXIT_CODE:
                    raise
                return False, f"mim {name} stopped: the dataset check failed (message above)"
        return wrapped

    get_command = module.MIM.get_command

    def get_quiet_command(self, ctx, name):
        command = get_command(self, ctx, name)
        namespace = getattr(getattr(command, "callback", None), "__globals__", {})
        if name in ("train", "test") and callable(namespace.get(name)):
            namespace[name] = quiet(namespace[name], name)
        return command

    module.MIM.get_command = get_quiet_command


HOOKS = {"fairseq": _register_fairseq_plugin, "mim.cli": _quiet_mim_data_check}


class _RunHookAfter:
    """Loader proxy: runs the module's own loader, puts that loader back on the module, then the hook."""

    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader
        self.hook(module)


class FrameworkHooks:
    """``sys.meta_path`` finder that answers only for the names in :data:`HOOKS`, once each."""

    def __init__(self):
        self.pending = dict(HOOKS)

    def find_spec(self, name, path=None, target=None):
        hook = self.pending.pop(name, None)
        if hook is None:
            return None
        for finder in sys.meta_path:
            find = None if finder is self else getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RunHookAfter(spec.loader, hook)
                return spec
        return None


def install():
    """Called from the ``.pth`` file; idempotent; hooks of modules already imported never run."""
    if os.environ.get(ENV, "1") == "0" or any(isinstance(f, FrameworkHooks) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, FrameworkHooks())
