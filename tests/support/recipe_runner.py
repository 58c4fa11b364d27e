"""Runs several fairseq-hydra-train recipes in one process (used by test_pretrain_recipes.py).

Each recipe costs ~3 s of training at tiny sizes but ~6 s of imports as its own ``fairseq-hydra-train``;
this does what that command does (``hydra_init(config_name)`` so the yaml is validated against fairseq's
schema, compose with overrides, ``fairseq_cli.hydra_train._hydra_main``) for a list of steps:
``["train", tag, config_name, [overrides]]`` or ``["export", fairseq_checkpoint, backbone_path]``.
Log lines of a run follow a ``RUN-START <tag>`` line.

    python tests/support/recipe_runner.py CONFIG_DIR STEPS_JSON
"""
import json
import logging
import sys


def main(config_dir: str, steps) -> None:
    from fairseq.dataclass.initialize import hydra_init
    from fairseq_cli.hydra_train import _hydra_main
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    for step in steps:
        if step[0] == "export":
            from beit3_plugins.pretraining.fairseq_plugin.export import export_checkpoint

            print(f"EXPORT {export_checkpoint(step[1], step[2])}", flush=True)
            continue
        _, tag, name, overrides = step
        print(f"RUN-START {tag}", flush=True)
        hydra_init(name)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = compose(config_name=name, overrides=overrides)
        _hydra_main(cfg)
        print(f"RUN-END {tag}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s | %(message)s")
    main(sys.argv[1], json.loads(sys.argv[2]))
