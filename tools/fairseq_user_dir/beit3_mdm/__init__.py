"""``fairseq-train --user-dir tools/fairseq_user_dir/beit3_mdm``: fairseq imports this folder as a
top-level module; importing the adapter registers the BEiT-3 pretraining task, model and criterion."""
import beit3_plugins.pretraining.fairseq_plugin  # noqa: F401
