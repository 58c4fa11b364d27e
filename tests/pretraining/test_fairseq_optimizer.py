"""``--optimizer beit3_adamw``: the papers' no-weight-decay groups through fairseq's own build path."""
import pytest
import torch


@pytest.fixture(scope="module")
def model_and_optimizer(data_world, tiny_spm):
    import beit3_plugins.pretraining.fairseq_plugin  # noqa: F401 - registers task, model, optimizer
    from fairseq import optim, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from beit3_plugins.vl_tasks.train import compose_config

    # a VL trainer config composed first in the same process (tests/pipelines runs the trainer in-process) must
    # not leave hydra's 1.3 version base behind: fairseq's config conversion refuses it
    compose_config(["task=vqa", "model=beit3_tiny"])

    world, _ = data_world
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[
        str(world), "--task", "vlmo_pretrain", "--arch", "vlmo_tiny", "--criterion", "beit3_mdm", "--spm-model",
        str(tiny_spm), "--image-size", "64", "--patch-size", "8", "--mim-target", "pixel", "--cpu",
        "--optimizer", "beit3_adamw", "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-6", "--weight-decay", "0.05",
        "--lr", "0.1"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, optim.build_optimizer(cfg.optimizer, params)


def test_groups_exclude_biases_norms_positions_and_tokens(model_and_optimizer):
    model, optimizer = model_and_optimizer
    by_id = {id(p): name for name, p in model.named_parameters()}
    groups = {g["group_name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"decay", "no_decay"}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    decay = {by_id[id(p)] for p in groups["decay"]["params"]}
    no_decay = {by_id[id(p)] for p in groups["no_decay"]["params"]}
    assert decay | no_decay == {n for n, p in model.named_parameters() if p.requires_grad} and not decay & no_decay
    backbone_list = {f"core.backbone.{n}" for n in model.core.backbone.no_weight_decay()}
    assert {"core.backbone.cls_token", "core.backbone.mask_token"} <= backbone_list <= no_decay
    assert any("pos" in n for n in backbone_list)          # absolute tables or the relative-position table
    for name in ("core.logit_scale", "core.mlm_head.bias"):
        assert name in no_decay, name
    assert any(".norm1." in n and n.endswith(".weight") for n in no_decay)
    assert all(not n.endswith(".bias") for n in decay)
    for name in ("core.backbone.text_embed.weight", "core.mlm_head.weight", "core.vision_head.weight",
                 "core.itm_head.weight"):
        assert name in decay, name
    assert all(p.dim() >= 2 for p in groups["decay"]["params"])
    assert any(".attn.qkv." in n for n in decay) and any(".ffn." in n for n in decay)


def test_step_decays_only_the_decay_group(model_and_optimizer):
    """With zero gradients AdamW's update is weight decay alone: decayed weights shrink by (1 - lr * wd),
    no-decay parameters stay exactly as they were."""
    model, optimizer = model_and_optimizer
    named = dict(model.named_parameters())
    watched = ["core.backbone.cls_token", "core.backbone.mask_token", "core.mlm_head.bias",
               "core.backbone.text_embed.weight", "core.mlm_head.weight"]
    before = {n: named[n].detach().clone() for n in watched}
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    for name in watched[:3]:
        assert torch.equal(named[name], before[name]), name
    for name in watched[3:]:
        assert before[name].abs().sum() > 0
        torch.testing.assert_close(named[name].detach(), before[name] * (1 - 0.1 * 0.05))


def test_sharding_options_fail_clearly(model_and_optimizer):
    """--shard-parameters needs the pass-through legacy_ddp wrapper and its own mixed precision; a single
    process has nothing to shard and trains unsharded."""
    from types import SimpleNamespace

    model, _ = model_and_optimizer
    ok = dict(shard_param_dtype="float32", ddp_backend="legacy_ddp", fp16=False, bf16=False, cpu=True)
    with pytest.raises(ValueError, match="legacy_ddp"):
        model.shard(SimpleNamespace(**{**ok, "ddp_backend": "fully_sharded"}))
    with pytest.raises(ValueError, match="--shard-param-dtype"):
        model.shard(SimpleNamespace(**{**ok, "fp16": True}))
    with pytest.raises(ValueError, match="choose from"):
        model.shard(SimpleNamespace(**{**ok, "shard_param_dtype": "int8"}))
    model.shard(SimpleNamespace(**ok))
    assert getattr(model, "sharded_state", None) is None
    assert not any(type(p).__name__ == "DTensor" for p in model.parameters())


def test_backbone_prefix_names_the_fairseq_models_backbone(model_and_optimizer):
    from beit3_plugins.backbones import MultiwayTransformer
    from beit3_plugins.pretraining.fairseq_plugin.models import BACKBONE_PREFIX

    model, _ = model_and_optimizer
    assert isinstance(model.get_submodule(BACKBONE_PREFIX[:-1]), MultiwayTransformer)
