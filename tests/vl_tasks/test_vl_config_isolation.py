"""The VL trainer's Hydra config must compose even after fairseq has registered its own schema.

fairseq stores a structured ``FairseqConfig`` under the name ``config`` in Hydra's global ConfigStore; a
primary config of the same name would be merged into fairseq's schema and fail (``Key 'data' not in
'FairseqConfig'``), e.g. in a notebook or test session that used both plugins.
"""
from fairseq.dataclass.initialize import hydra_init

from beit3_plugins.vl_tasks.train import compose_config


def test_vl_config_composes_after_fairseq_registered_its_schema():
    hydra_init()
    cfg = compose_config(["task=vqa", "model=beit3_tiny"])
    assert "data" in cfg and cfg.task.name == "vqa"
