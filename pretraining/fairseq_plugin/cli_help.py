"""``fairseq-train --task beit3_mdm --help`` lists the task's (and ``--arch``'s) options.

fairseq's ``options.parse_args_and_arch`` parses once with the help flag live, before it adds the options of
the chosen task, model, criterion and optimizer, so ``--help`` prints only the generic options, for every
task (and with no ``--arch`` it would fail on the default architecture first). With a help flag on the
command line, :func:`install`'s wrapper adds those groups the way fairseq does (the ``--arch`` group only
for a registered architecture), prints the completed parser's help and exits 0. Without a help flag it is
fairseq's own function.
"""
from __future__ import annotations

import argparse
import sys

from fairseq import options

__all__ = ["install"]

HELP_FLAGS = ("-h", "--help")


def _print_full_help(parser, argv, modify_parser) -> None:
    from fairseq.dataclass.utils import gen_parser_from_dataclass
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_REGISTRY

    args, _ = parser.parse_known_args([a for a in argv if a not in HELP_FLAGS])
    if getattr(args, "arch", None) in ARCH_MODEL_REGISTRY:
        ARCH_MODEL_REGISTRY[args.arch].add_args(parser.add_argument_group(
            "Model-specific configuration", argument_default=argparse.SUPPRESS))
    if getattr(args, "task", None) in TASK_REGISTRY:
        TASK_REGISTRY[args.task].add_args(parser)
    for name, registry in REGISTRIES.items():
        cls = registry["registry"].get(getattr(args, name, None))
        if hasattr(cls, "add_args"):
            cls.add_args(parser)
        elif hasattr(cls, "__dataclass"):
            gen_parser_from_dataclass(parser, cls.__dataclass())
    if modify_parser is not None:
        modify_parser(parser)
    parser.print_help()


def install() -> None:
    original = options.parse_args_and_arch
    if getattr(original, "beit3_full_help", False):
        return

    def parse_args_and_arch(parser, input_args=None, parse_known=False, suppress_defaults=False,
                            modify_parser=None):
        argv = list(sys.argv[1:] if input_args is None else input_args)
        if not any(flag in HELP_FLAGS for flag in argv):
            return original(parser, input_args, parse_known, suppress_defaults, modify_parser)
        _print_full_help(parser, argv, modify_parser)
        sys.exit(0)

    parse_args_and_arch.beit3_full_help = True
    options.parse_args_and_arch = parse_args_and_arch
