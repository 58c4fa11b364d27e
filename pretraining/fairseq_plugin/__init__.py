"""fairseq adapter: registers task ``beit3_mdm`` / ``vlmo_pretrain``, model ``beit3_pretrain`` with
architectures ``beit3_tiny|base|large|giant`` and ``vlmo_tiny|base|large``, criterion ``beit3_mdm`` and optimizer ``beit3_adamw``.

Importing this package is the only place fairseq is imported. fairseq loads it through
``--user-dir tools/fairseq_user_dir/beit3_mdm`` (a shim folder that imports this package).
"""
from beit3_plugins.optional import require

require("fairseq", "fairseq", "beit3_plugins.pretraining.fairseq_plugin")

from . import criterions, models, optimizers, safe_checkpoints, tasks  # noqa: E402,F401

safe_checkpoints.install()  # --restore-file / --finetune-from-model: weights-only, with an actionable error
safe_checkpoints.install_save_dir_probe()  # an unwritable --save-dir stops the run before training
