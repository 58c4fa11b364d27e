"""``beit3-plugins <command> [args]``: one console script, subcommands resolved lazily.

Each command is a ``"module:function"`` string; the function takes the remaining argv and returns an
exit code. Nothing is imported until a command runs, so ``beit3-plugins --help`` stays fast and a
command that needs a framework pulls it in only when used. The core lists only its own commands in
``COMMANDS``; the layers above it (pretraining, pipelines, ...) and installed third-party packages declare
theirs under the entry-point group ``beit3_plugins.commands`` (name -> ``module:function``, see
``setup.py``), so this module names no package above the core. :func:`register_command` adds one at run time.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple

__all__ = ["COMMANDS", "register_command", "main", "COMMAND_ENTRY_POINT_GROUP"]

COMMAND_ENTRY_POINT_GROUP = "beit3_plugins.commands"

# name -> (target "module:function", one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "make-world": ("beit3_plugins.data.world:cli_main",
                   "generate the synthetic shape world in COCO/VQA/NLVR2/Flickr30k/ADE20K/ImageNet formats"),
    "train-spm": ("beit3_plugins.tokenizer:cli_main",
                  "train a sentencepiece model with the XLM-R/fairseq id layout BEiT-3 uses"),
    "convert-safetensors": ("beit3_plugins.checkpoint:convert_cli",
                            "re-save a (released) .pth checkpoint as .safetensors (read safely)"),
}


def register_command(name: str, target: str, help: str = "", *, force: bool = False) -> None:
    """Add ``beit3-plugins <name>`` running ``target`` ("module:function" taking argv, returning int)."""
    if ":" not in target:
        raise ValueError(f"command target must be 'module:function', got {target!r}")
    if name in COMMANDS and COMMANDS[name][0] != target and not force:
        raise ValueError(f"command {name!r} already runs {COMMANDS[name][0]}; pass force=True to replace it")
    COMMANDS[name] = (target, help)


def target_help(target: str) -> str:
    """The first line of the target function's docstring, read from its source file without importing it
    (importing would pull in its framework and make ``--help`` slow); "" when there is none."""
    import ast
    import importlib.machinery
    import importlib.util

    module, _, func = target.partition(":")
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
        for part in rest:  # walk the packages without executing their __init__ files
            spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations or []))
        with open(spec.origin, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (ImportError, AttributeError, TypeError, OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == func:
            doc = ast.get_docstring(node) or ""
            return doc.strip().splitlines()[0].strip() if doc.strip() else ""
    return ""


def _all_commands() -> Dict[str, Tuple[str, str]]:
    commands = dict(COMMANDS)
    for ep in importlib.metadata.entry_points(group=COMMAND_ENTRY_POINT_GROUP):
        origin = ep.dist.name if ep.dist else "a plugin"
        commands.setdefault(ep.name, (ep.value, target_help(ep.value) or f"(no description; from {origin})"))
    return commands


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
    commands = _all_commands()
    width = max(map(len, commands)) + 2
    parser = argparse.ArgumentParser(
        prog="beit3-plugins", description="BEiT-3 family tools",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<{width}}{help_}" for name, (_, help_) in sorted(commands.items()))
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
    if args.command not in commands:
        import difflib

        close = difflib.get_close_matches(args.command, list(commands), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        parser.error(f"unknown command {args.command!r}.{hint} Commands: {', '.join(sorted(commands))}")
    try:
        result = _resolve(commands[args.command][0])(argv[1:])
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
