"""This package's zoo entries, listed as data: beit3-plugins reads ``ENTRIES`` through the
``beit3_plugins.zoo`` entry point in pyproject.toml (nothing registers when this module is imported).

The file is what ``python -m beit3_plugins.vl_tasks.train task=shape_colors model=beit3_tiny ...`` writes
(``checkpoints/last.pt``), published at ``RELEASE_URL`` by whoever ships the plugin; set
``$BEIT3_PLUGINS_MIRROR`` to serve it from elsewhere.
"""
from beit3_plugins.zoo import TokenizerSpec, ZooEntry, ZooFile

RELEASE_URL = "https://github.com/example/beit3-plugin-example/releases/download/v0.1.0/"

ENTRIES = (
    ZooEntry(name="shape_colors_beit3_tiny", family="beit3", task="shape_colors",
             weights=ZooFile(RELEASE_URL + "shape_colors_beit3_tiny.pt"), backbone="beit3_tiny", image_size=224,
             tokenizer=None, head={"num_labels": 4}, dataset="shape world (beit3-plugins make-world)",
             notes="example third-party task: which of red / green / blue / yellow an image contains"),
)
