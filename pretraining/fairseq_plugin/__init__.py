"""fairseq adapter: registers task ``beit3_mdm`` / ``vlmo_pretrain``, model ``beit3_pretrain`` with
architectures ``beit3_tiny|base|large|giant`` and ``vlmo_tiny|base|large``, criterion ``beit3_mdm`` and optimizer ``beit3_adamw``.

Importing this package is the only place fairseq is imported. An installed package has it imported whenever
a process imports fairseq (``beit3_plugins/autoload.py``), so ``fairseq-train --task beit3_mdm`` needs
no ``--user-dir``; ``--user-dir $(beit3-plugins paths fairseq-user-dir)`` does the same explicitly.
"""
from beit3_plugins.optional import require

require("fairseq", "fairseq", "beit3_plugins.pretraining.fairseq_plugin")

from . import cli_help, criterions, models, optimizers, safe_checkpoints, tasks  # noqa: E402,F401

safe_checkpoints.install()  # --restore-file / --finetune-from-model: weights-only, with an actionable error
safe_checkpoints.install_save_dir_probe()  # an unwritable --save-dir stops the run before training
cli_help.install()  # --help lists the task's and the model's options, not only fairseq's generic ones
