"""``beit3-plugins <command> [args]``: one console script, subcommands resolved lazily.

Each command is a :class:`Command` (name, ``"module:function"`` target, help) in the ``COMMANDS`` registry (the
project's one ``Registry`` type: one lookup, one did-you-mean error); the function takes the remaining argv and
returns an exit code. Nothing is imported until a command runs, so ``beit3-plugins --help`` stays fast and a
command that needs a framework pulls it in only when used. The core lists only its own commands; the layers
above it (pretraining, pipelines, ...) and installed third-party packages declare theirs under the entry-point
group ``beit3_plugins.commands`` (name -> ``module:function``, see ``setup.py``), read without importing the
target, so this module names no package above the core. :func:`register_command` adds one at run time.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from typing import Callable, Optional, Sequence

from beit3_plugins.registry import Registry, UnknownComponentError

__all__ = ["COMMANDS", "Command", "register_command", "main", "COMMAND_ENTRY_POINT_GROUP"]

COMMAND_ENTRY_POINT_GROUP = "beit3_plugins.commands"


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    target: str      # "module:function" taking argv, returning an exit code
    help: str = ""

    def __post_init__(self) -> None:
        if ":" not in self.target:
            raise ValueError(f"command target must be 'module:function', got {self.target!r}")


def _from_entry_point(ep) -> Command:
    """A command an installed package declares; its help is its function's first docstring line."""
    origin = ep.dist.name if ep.dist else "a plugin"
    return Command(ep.name, ep.value, target_help(ep.value) or f"(no description; from {origin})")


COMMANDS = Registry("command", entry_type=Command, entry_point_group=COMMAND_ENTRY_POINT_GROUP,
                    entry_point_loader=_from_entry_point, code_plugins=False)
for _command in (
    Command("make-world", "beit3_plugins.data.world:cli_main",
            "generate the synthetic shape world in COCO/VQA/NLVR2/Flickr30k/ADE20K/ImageNet formats"),
    Command("data", "beit3_plugins.data.official:cli_main",
            "data check / data prepare: the official download layout of every benchmark, its derived files"),
    Command("train-spm", "beit3_plugins.tokenizer:cli_main",
            "train a sentencepiece model with the XLM-R/fairseq id layout BEiT-3 uses"),
    Command("convert-safetensors", "beit3_plugins.checkpoint:convert_cli",
            "re-save a (released) .pth checkpoint as .safetensors (read safely)"),
    Command("paths", "beit3_plugins.paths:cli_main",
            "where the installed configs and fairseq's --user-dir folder are (for the framework commands)"),
):
    COMMANDS.add(_command, source=__name__)


def register_command(name: str, target: str, help: str = "", *, force: bool = False) -> None:
    """Add ``beit3-plugins <name>`` running ``target`` ("module:function" taking argv, returning int)."""
    COMMANDS.add(Command(name, target, help), force=force, source="register_command")


def target_help(target: str) -> str:
    """The first line of the target function's docstring, read from its source file without importing it
    (importing would pull in its framework and make ``--help`` slow); "" when there is none."""
    import ast
    import importlib.util

    module, _, func = target.partition(":")
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
        name = top
        for part in rest:  # walk the packages without executing their __init__ files; every finder is asked,
            name = f"{name}.{part}"  # so an editable install's name mapping finds mapped folders too
            locations = list(spec.submodule_search_locations or [])
            spec = next(found for finder in sys.meta_path if hasattr(finder, "find_spec")
                        for found in [finder.find_spec(name, locations)] if found is not None)
        with open(spec.origin, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (ImportError, AttributeError, TypeError, OSError, SyntaxError, ValueError, StopIteration):
        return ""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == func:
            line = (ast.get_docstring(node) or "").strip().split("\n")[0].strip().rstrip(".")
            return line[:1].lower() + line[1:] if line[1:2].islower() else line  # the style of the core's helps
    return ""


# Errors that come from what the user gave (a path, a name, a value) and read as one line; anything else is
# a bug and keeps its traceback. ``--debug`` (anywhere on the line) shows the traceback of these too.
USER_ERRORS = (ValueError, TypeError, LookupError, OSError, ImportError)


def _user_error(exc: BaseException) -> bool:
    from beit3_plugins.checkpoint import CheckpointMismatchError

    return isinstance(exc, USER_ERRORS + (CheckpointMismatchError,))


def _resolve(target: str) -> Callable[[Sequence[str]], Optional[int]]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    commands = dict(COMMANDS.items())
    width = max(map(len, commands)) + 2
    parser = argparse.ArgumentParser(
        prog="beit3-plugins", description="BEiT-3 family tools",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<{width}}{cmd.help}" for name, cmd in sorted(commands.items()))
               + "\n\nrun `beit3-plugins <command> --help` for a command's options; --debug shows the traceback "
                 "of an error")
    parser.add_argument("command", metavar="command", help="one of: " + ", ".join(sorted(commands)))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv:
        parser.print_help()
        return 2
    if argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args = parser.parse_args(argv[:1])
    try:
        command = COMMANDS[args.command]
    except UnknownComponentError as exc:
        parser.error(str(exc))
    try:
        result = _resolve(command.target)(argv[1:])
    except Exception as exc:  # noqa: BLE001 - user errors become one line; see USER_ERRORS
        if debug or not _user_error(exc):
            raise
        message = str(exc).strip() or type(exc).__name__
        if isinstance(exc, KeyError) and len(exc.args) == 1:
            message = str(exc.args[0])
        print(f"beit3-plugins {args.command}: error: {message}\n(run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
