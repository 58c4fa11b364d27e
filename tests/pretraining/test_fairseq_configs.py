"""Shipped pretraining recipes: every key is a real fairseq / plugin option and the paper's settings hold."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs" / "pretrain").glob("*.yaml"))


def _dataclass_fields(section, name):
    import beit3_plugins.pretraining.fairseq_plugin  # noqa: F401 - registers task, model, criterion
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_DATACLASS_REGISTRY
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    if section == "task":
        dc = TASK_DATACLASS_REGISTRY[name]
    elif section == "model":
        dc = MODEL_DATACLASS_REGISTRY[ARCH_MODEL_NAME_REGISTRY[name]]
    elif section in REGISTRIES:
        dc = REGISTRIES[section]["dataclass_registry"][name]
    else:
        dc = FairseqConfig.__dataclass_fields__[section].type
    return set(dc.__dataclass_fields__)


def test_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"beit3_tiny_cpu", "beit3_base_ablation", "beit3_giant", "vlmo_base",
                                         "vlmo_base_stage2_language"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_keys_are_registered_options(recipe):
    cfg = OmegaConf.load(recipe)
    for section, values in cfg.items():
        if section == "hydra":
            continue
        if isinstance(values, str):          # e.g. criterion: beit3_mdm
            _dataclass_fields(section, values)
            continue
        name = values.get("_name")
        fields = _dataclass_fields(section, name) if name else _dataclass_fields(section, None)
        unknown = set(values) - fields - {"_name"}
        assert not unknown, f"{recipe.name}: {section} has unknown keys {sorted(unknown)}"


@pytest.mark.parametrize("name,lr,steps,patch", [("beit3_base_ablation", 2e-3, 200_000, 16),
                                                  ("beit3_giant", 1e-3, 1_000_000, 14)])
def test_paper_optimisation_settings(name, lr, steps, patch):
    cfg = OmegaConf.load(ROOT / "configs" / "pretrain" / f"{name}.yaml")
    assert cfg.optimizer._name == "beit3_adamw" and cfg.optimizer.adam_betas == "(0.9,0.98)"
    assert cfg.optimizer.adam_eps == 1e-6 and cfg.optimizer.weight_decay == 0.05
    assert cfg.lr_scheduler._name == "cosine" and cfg.lr_scheduler.warmup_updates == 10000
    assert cfg.optimization.lr == [lr] and cfg.optimization.max_update == steps
    assert cfg.model.drop_path_rate == 0.1 and cfg.task.patch_size == patch
    assert cfg.task.image_mask_ratio == 0.4 and cfg.task.text_mask_prob == 0.15 and cfg.task.pair_text_mask_prob == 0.5
    assert cfg.task.mvlm_masking == "separate"
    # equal numbers of images, texts and pairs per step
    assert cfg.task.get("texts_per_unit", 1) == cfg.task.get("images_per_unit", 1) == cfg.task.get("pairs_per_unit", 1)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_exclude_biases_norms_and_positions_from_weight_decay(recipe):
    """Every recipe uses beit3_adamw (no-decay groups, tested in test_fairseq_optimizer.py), not fairseq's
    adam, which decays every parameter."""
    assert OmegaConf.load(recipe).optimizer._name == "beit3_adamw"


def test_giant_recipe_shards_and_checkpoints_activations():
    """The giant recipe shards with torch FSDP2 (the launch tested on CPU in test_fairseq_pretrain.py):
    the model option, the optimizer that reduces / clips / checkpoints shards, a pass-through wrapper."""
    cfg = OmegaConf.load(ROOT / "configs" / "pretrain" / "beit3_giant.yaml")
    assert cfg.model.shard_parameters is True and cfg.model.shard_param_dtype == "bfloat16"
    assert cfg.optimizer._name == "beit3_adamw" and cfg.distributed_training.ddp_backend == "legacy_ddp"
    assert not cfg.common.fp16 and not cfg.common.bf16
    assert cfg.model.checkpoint_activations is True and cfg.model._name == "beit3_giant"


@pytest.mark.parametrize("name", ["vlmo_base", "vlmo_base_stage2_language"])
def test_vlmo_recipes_mask_whole_words(name):
    cfg = OmegaConf.load(ROOT / "configs" / "pretrain" / f"{name}.yaml")
    assert cfg.task.whole_word_masking is True and cfg.task.text_mask_prob == 0.15


def test_vlmo_stage2_trains_language_only():
    cfg = OmegaConf.load(ROOT / "configs" / "pretrain" / "vlmo_base_stage2_language.yaml")
    assert cfg.task.stage == "language" and cfg.task._name == "vlmo_pretrain"
