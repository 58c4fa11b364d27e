"""``--user-dir`` folder for fairseq (``beit3-plugins paths`` prints where it is installed): fairseq imports it
as a top-level module, and importing the adapter registers the BEiT-3 pretraining task, model and criterion.
Only needed where the autoload is off (``BEIT3_AUTOLOAD=0``); see ``beit3_plugins/autoload.py``."""
import beit3_plugins.pretraining.fairseq_plugin  # noqa: F401
