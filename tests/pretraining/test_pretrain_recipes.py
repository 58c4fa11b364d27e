"""Pretraining recipes of the papers: every shipped recipe composes and trains a few steps on the data world
(tiny sizes, one process for all runs), the ablation switches change what is trained, colour jitter /
RandAugment reach the training images, the VLMo stages chain from a BEiT checkpoint."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "configs" / "pretrain"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}:{os.environ['PATH']}",
       "BEIT3_FAIRSEQ_USER_DIR": str(ROOT / "pretraining" / "fairseq_user_dir" / "beit3_mdm")}


# ---------------------------------------------------------------------------------------------- helpers
def tiny_beit(depth=4, shared_rel_pos=False, seed=0):
    """A timm BEiT (the ViT-like key layout of the BEiT / BEiT v2 releases) at vlmo_tiny's size, perturbed
    away from its initialisation so that a wrong mapping shows."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=64, patch_size=8, embed_dim=64,
                              depth=depth, num_heads=4, init_values=0.1, num_classes=0, global_pool="token",
                              use_rel_pos_bias=not shared_rel_pos, use_shared_rel_pos_bias=shared_rel_pos).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def tiny_overrides(world, spm, save_dir, model, **extra):
    values = {
        "task.data": world, "task.spm_model": spm, "task.text_data": "text/corpus.txt",
        "task.image_data": "imagenet/train", "task.pair_data": "coco/dataset_coco.json", "task.pair_image_root": "coco",
        "task.pair_splits": "train", "task.valid_text_data": "", "task.valid_image_data": "imagenet/val",
        "task.valid_pair_splits": "val", "task.image_size": 64, "task.patch_size": 8, "task.max_text_len": 32,
        "task.min_mask_block": 4, "common.cpu": "true", "common.log_interval": 1, "optimization.max_update": 3,
        "dataset.batch_size": 2, "dataset.num_workers": 0, "dataset.disable_validation": "true",
        "lr_scheduler.warmup_updates": 1, "checkpoint.save_interval_updates": 0, "checkpoint.save_dir": save_dir,
        "distributed_training.ddp_backend": "legacy_ddp", "model._name": model, **extra}
    return [f"++{k}={v}" for k, v in values.items()]


MDM = {"model.tokenizer_arch": "vqkd_tiny", "model.tokenizer_checkpoint": ""}


def parse_runs(out):
    """{tag: [train_inner dicts]} from the runner's output."""
    runs, tag = {}, None
    for line in out.splitlines():
        if line.startswith("RUN-START "):
            tag = line.split(" ", 1)[1]
            runs[tag] = []
        elif line.startswith("train_inner | ") and tag:
            runs[tag].append(json.loads(line.split(" | ", 1)[1]))
    return runs


def logged_objectives(logs):
    return {k[: -len("_loss")] for log in logs for k, v in log.items() if k.endswith("_loss") and v is not None}


# ---------------------------------------------------------------------------------------------- recipe runs
@pytest.fixture(scope="module")
def recipe_runs(data_world, tiny_spm, tmp_path_factory):
    """Every recipe at tiny size, plus the ablation switches, in one fairseq process; the VLMo chain starts from a
    BEiT checkpoint converted by the documented command."""
    world, _ = data_world
    tmp = tmp_path_factory.mktemp("recipes")
    torch.save({"model": tiny_beit().state_dict()}, tmp / "beit.pth")
    cli = subprocess.run([BIN / "beit3-plugins", "init-vlmo-from-beit", tmp / "beit.pth", tmp / "stage1.pth",
                          "--arch", "vlmo_tiny"], env=ENV, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    vlmo = {}
    steps = [
        ["train", "ablation", "beit3_base_ablation", tiny_overrides(world, tiny_spm, tmp / "ab", "beit3_tiny_shared",
                                                                    **MDM)],
        ["train", "ablation_std_no_image_recon", "beit3_base_ablation", tiny_overrides(
            world, tiny_spm, tmp / "std", "beit3_tiny_standard", **MDM, **{"task.mim": "false",
                                                                          "task.mvlm_masking": "text"})],
        ["train", "ablation_no_text_recon", "beit3_base_ablation", tiny_overrides(
            world, tiny_spm, tmp / "nt", "beit3_tiny_shared", **MDM, **{"task.mlm": "false",
                                                                       "task.mvlm_masking": "image"})],
        ["train", "ablation_monomodal_only", "beit3_base_ablation", tiny_overrides(
            world, tiny_spm, tmp / "mono", "beit3_tiny", **MDM, **{"task.mvlm": "false"})],
        ["train", "vlbeit", "vlbeit_base", tiny_overrides(world, tiny_spm, tmp / "vlbeit", "beit3_tiny_shared", **MDM)],
        ["train", "giant", "beit3_giant", tiny_overrides(world, tiny_spm, tmp / "giant", "beit3_tiny_shared", **MDM)],
        ["train", "vlmo_stage2", "vlmo_base_stage2_language", tiny_overrides(
            world, tiny_spm, tmp / "s2", "vlmo_tiny", **vlmo, **{"model.init_from": tmp / "stage1.pth"})],
        ["export", str(tmp / "s2" / "checkpoint_last.pt"), str(tmp / "stage2.pth")],
        ["train", "vlmo_stage3", "vlmo_base", tiny_overrides(world, tiny_spm, tmp / "s3", "vlmo_tiny", **vlmo,
                                                             **{"model.init_from": tmp / "stage2.pth"})],
        ["train", "vlmo_no_itc", "vlmo_base", tiny_overrides(world, tiny_spm, tmp / "noitc", "vlmo_tiny", **vlmo,
                                                             **{"model.init_from": tmp / "stage2.pth",
                                                                "task.itc": "false"})],
        ["train", "vlmo_itc_only", "vlmo_base", tiny_overrides(world, tiny_spm, tmp / "itc", "vlmo_tiny", **vlmo,
                                                               **{"model.init_from": tmp / "stage2.pth",
                                                                  "task.itm": "false", "task.mlm": "false"})],
    ]
    proc = subprocess.run([sys.executable, ROOT / "tests" / "support" / "recipe_runner.py", str(RECIPES),
                           json.dumps(steps, default=str)],
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return tmp, parse_runs(proc.stdout), proc.stdout


EXPECTED = {  # tag: (objectives that must be logged, objectives that must not)
    "ablation": ({"mlm", "mim", "mvlm_text", "mvlm_image"}, set()),
    "ablation_std_no_image_recon": ({"mlm", "mvlm_text"}, {"mim", "mvlm_image"}),
    "ablation_no_text_recon": ({"mim", "mvlm_image"}, {"mlm", "mvlm_text"}),
    "ablation_monomodal_only": ({"mlm", "mim"}, {"mvlm_text", "mvlm_image"}),
    "vlbeit": ({"mlm", "mim", "mvlm_text", "mvlm_image"}, set()),
    "giant": ({"mlm", "mim", "mvlm_text", "mvlm_image"}, set()),
    "vlmo_stage2": ({"mlm"}, {"itc", "itm", "vlmo_mlm", "mim"}),
    "vlmo_stage3": ({"itc", "itm", "vlmo_mlm"}, {"mlm", "mim"}),
    "vlmo_no_itc": ({"itm", "vlmo_mlm"}, {"itc"}),
    "vlmo_itc_only": ({"itc"}, {"itm", "vlmo_mlm"}),
}


@pytest.mark.parametrize("tag", sorted(EXPECTED))
def test_recipe_trains_the_objectives_its_switches_select(recipe_runs, tag):
    _, runs, _ = recipe_runs
    logs = runs[tag]
    assert [int(log["num_updates"]) for log in logs] == [1, 2, 3]
    assert all(np.isfinite(float(log["loss"])) for log in logs)
    present, absent = EXPECTED[tag]
    objectives = logged_objectives(logs)
    assert present <= objectives and not (absent & objectives), objectives


def test_standard_transformer_run_has_no_modality_experts(recipe_runs):
    from fairseq import checkpoint_utils

    tmp, _, _ = recipe_runs
    std = checkpoint_utils.load_checkpoint_to_cpu(str(tmp / "std" / "checkpoint_last.pt"))["model"]
    shared = checkpoint_utils.load_checkpoint_to_cpu(str(tmp / "ab" / "checkpoint_last.pt"))["model"]
    assert not [k for k in std if ".vision." in k or ".text." in k or ".vl." in k]
    assert "core.backbone.layers.0.ffn.shared.fc1.weight" in std
    assert {"core.backbone.layers.0.ffn.text.fc1.weight", "core.backbone.layers.3.ffn.vl.fc1.weight",
            "core.backbone.layers.0.attn.qkv.shared.weight"} <= set(shared)
    assert "core.backbone.layers.2.ffn.vl.fc1.weight" not in shared


def test_vlmo_stages_chain_from_beit(recipe_runs):
    """Stage 2 starts from the converted BEiT and trains only the language side; stage 3 continues from its
    export."""
    from fairseq import checkpoint_utils

    tmp, _, out = recipe_runs
    stage1 = torch.load(tmp / "stage1.pth", weights_only=True)["model"]
    stage2 = checkpoint_utils.load_checkpoint_to_cpu(str(tmp / "s2" / "checkpoint_last.pt"))["model"]
    for key in ("layers.1.attn.qkv.shared.weight", "layers.1.ffn.vision.fc1.weight", "patch_embed.weight"):
        assert torch.equal(stage2[f"core.backbone.{key}"], stage1[key]), key         # frozen in stage 2
    for key in ("layers.1.ffn.text.fc1.weight", "text_embed.weight"):
        assert not torch.equal(stage2[f"core.backbone.{key}"], stage1[key]), key     # learned in stage 2
    exported = torch.load(tmp / "stage2.pth", weights_only=True)
    exported = exported.get("model", exported)
    stage3 = checkpoint_utils.load_checkpoint_to_cpu(str(tmp / "s3" / "checkpoint_last.pt"))["model"]
    assert not torch.equal(stage3["core.backbone.layers.1.attn.qkv.shared.weight"],
                           exported["layers.1.attn.qkv.shared.weight"])               # stage 3 trains attention
    assert out.count("continued from") >= 4


# ---------------------------------------------------------------------------------------------- recipe settings
def recipe(name):
    return OmegaConf.load(RECIPES / f"{name}.yaml")


def test_vlbeit_recipe_is_the_published_one():
    cfg = recipe("vlbeit_base")
    assert cfg.model._name == "vlbeit_base" and cfg.model.drop_path_rate == 0.1 and cfg.model.mim_target == "vqkd"
    assert cfg.optimizer.adam_betas == "(0.9,0.999)" and cfg.optimizer.weight_decay == 0.05
    assert cfg.lr_scheduler._name == "cosine" and cfg.lr_scheduler.warmup_updates == 10000
    assert cfg.optimization.lr == [2e-3] and cfg.optimization.max_update == 480_000
    assert cfg.task.mvlm_masking == "joint" and cfg.task.pair_text_mask_prob == 0.5 and cfg.task.color_jitter == 0.4
    assert cfg.task.image_mask_ratio == 0.4 and cfg.task.text_mask_prob == 0.15


@pytest.mark.parametrize("name", ["beit3_base_ablation", "beit3_giant", "vlbeit_base"])
def test_masked_data_modeling_recipes_use_beit_colour_jitter(name):
    assert recipe(name).task.color_jitter == 0.4 and recipe(name).task.get("rand_augment_ops", 0) == 0


def test_vlmo_recipe_uses_the_official_randaugment():
    task = recipe("vlmo_base").task
    assert (task.rand_augment_ops, task.rand_augment_magnitude, task.train_crop_scale) == (2, 7, 0.5)
    assert task.get("color_jitter", 0) == 0


def test_ablation_recipe_uses_the_papers_layout():
    from beit3_plugins.registry import BACKBONES

    assert recipe("beit3_base_ablation").model._name == "beit3_base_shared"
    cfg = BACKBONES.default_config("beit3_base_shared")
    assert (cfg.layout, cfg.vl_expert_start, cfg.depth, cfg.embed_dim, cfg.ffn_dim) == ("shared", 9, 12, 768, 3072)
    std = BACKBONES.default_config("beit3_base_standard")
    assert (std.layout, std.multiway, std.depth) == ("shared", False, 12)
    vlbeit = BACKBONES.default_config("vlbeit_base")
    assert (vlbeit.layout, vlbeit.vl_expert_start, vlbeit.vocab_size) == ("shared", 10, 64010)


# ---------------------------------------------------------------------------------------------- augmentation
class _Replay:
    """A numpy-Generator stand-in replaying torchvision's ColorJitter draws (order, then the factors)."""

    def __init__(self, order, factors):
        self.order, self.factors = order, list(factors)

    def permutation(self, n):
        return np.asarray(self.order)

    def uniform(self, low, high):
        return self.factors.pop(0)


def test_colour_jitter_matches_torchvision():
    """Same adjustment order and factors as torchvision.transforms.ColorJitter(0.4, 0.4, 0.4) draws -> same image."""
    from PIL import Image
    from torchvision.transforms import ColorJitter as TVJitter

    from beit3_plugins.pretraining.augment import ColorJitter

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    tv = TVJitter(0.4, 0.4, 0.4)
    for seed in range(4):
        torch.manual_seed(seed)
        order, b, c, s, _ = TVJitter.get_params(tv.brightness, tv.contrast, tv.saturation, tv.hue)
        order = [int(i) for i in order if int(i) < 3]
        by_kind = {0: b, 1: c, 2: s}
        ours = ColorJitter(0.4, 0.4, 0.4)(image, _Replay(order, [by_kind[k] for k in order]))
        torch.manual_seed(seed)
        assert np.array_equal(np.asarray(ours), np.asarray(tv(image)))


def test_randaugment_draws_as_vlmo():
    """N=2 ops chosen uniformly from VLMo's ten, each applied with probability 0.5, geometric ones signed."""
    from beit3_plugins.pretraining.augment import RAND_AUGMENT_OPS, RandAugment

    aug = RandAugment(2, 7)
    rng = np.random.default_rng(0)
    draws = [aug.draw(rng) for _ in range(4000)]
    assert np.mean([len(d) for d in draws]) == pytest.approx(1.0, abs=0.05)
    counts = {name: sum(op == name for d in draws for op, _ in d) for name in RAND_AUGMENT_OPS}
    assert set(counts) == {"Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY",
                           "TranslateX", "TranslateY", "Rotate"}
    assert all(abs(n / 4000 - 0.1) < 0.02 for n in counts.values()), counts
    assert np.mean([s for d in draws for _, s in d]) == pytest.approx(0.0, abs=0.05)
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(2, 11)


def test_randaugment_magnitude_seven_rotates_21_degrees_bilinear_with_grey_fill():
    from PIL import Image

    from beit3_plugins.pretraining.augment import RandAugment

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))

    class OneRotate(RandAugment):
        def draw(self, rng):
            return (("Rotate", 1.0),)

    out = OneRotate(1, 7)(image, None)
    assert np.array_equal(np.asarray(out), np.asarray(image.rotate(21.0, resample=Image.BILINEAR,
                                                                        fillcolor=(128, 128, 128))))


@pytest.mark.parametrize("task_name,extra", [("beit3_mdm", {"color_jitter": 0.4}),
                                             ("vlmo_pretrain", {"rand_augment_ops": 2, "rand_augment_magnitude": 7})])
def test_task_applies_its_colour_augmentation(data_world, tiny_spm, task_name, extra):
    """The configured augmentation changes the training images of the same example (same crop and flip draws
    before it), and an example is still the same on a second read (resume)."""
    from beit3_plugins.pretraining.fairseq_plugin import tasks

    world, _ = data_world
    cls, cfg_cls = ((tasks.Beit3MdmTask, tasks.Beit3MdmTaskConfig) if task_name == "beit3_mdm"
                    else (tasks.VlmoPretrainTask, tasks.VlmoPretrainTaskConfig))

    def images(**kw):
        task = cls.setup_task(cfg_cls(data=str(world), spm_model=str(tiny_spm), image_size=64, patch_size=8,
                                      min_mask_block=4, seed=5, **kw))
        task.load_dataset("train")
        ds = task.datasets["train"]
        return torch.stack([ds[i]["pair"][0]["image"] for i in range(8)])

    plain, augmented, again = images(), images(**extra), images(**extra)
    assert torch.equal(augmented, again)
    changed = [(a - p).abs().mean() > 0.01 for a, p in zip(augmented, plain)]
    assert sum(changed) >= (8 if task_name == "beit3_mdm" else 3), changed


# ---------------------------------------------------------------------------------------------- switches
def test_mvlm_masking_text_or_image_only(data_world, tiny_spm):
    from beit3_plugins.pretraining.fairseq_plugin.tasks import Beit3MdmTask, Beit3MdmTaskConfig
    from beit3_plugins.pretraining.masking import IGNORE_INDEX

    world, _ = data_world
    for mode, text_masked, image_masked in (("text", True, False), ("image", False, True)):
        task = Beit3MdmTask.setup_task(Beit3MdmTaskConfig(data=str(world), spm_model=str(tiny_spm), image_size=64,
                                                          patch_size=8, min_mask_block=4, seed=5, mvlm_masking=mode,
                                                          mlm=False, mim=False))
        task.load_dataset("train")
        ds = task.datasets["train"]
        assert set(ds.sources) == {"pair"}                      # mlm / mim off: no text or image source
        pair = ds.collater([ds[i] for i in range(8)])["net_input"]["pair"]
        text = (pair["targets"] != IGNORE_INDEX).any(1)
        patches = pair["mask"].any(1)
        assert bool(text.all()) == text_masked and bool(text.any()) == text_masked
        assert bool(patches.all()) == image_masked and bool(patches.any()) == image_masked


def test_every_objective_off_is_refused(data_world, tiny_spm):
    from beit3_plugins.pretraining.fairseq_plugin.tasks import (Beit3MdmTask, Beit3MdmTaskConfig, VlmoPretrainTask,
                                                                VlmoPretrainTaskConfig)

    world, _ = data_world
    with pytest.raises(ValueError, match="every mdm objective is switched off"):
        Beit3MdmTask.setup_task(Beit3MdmTaskConfig(data=str(world), spm_model=str(tiny_spm), mlm=False, mim=False,
                                                   mvlm=False))
    with pytest.raises(ValueError, match="every vlmo objective is switched off"):
        VlmoPretrainTask.setup_task(VlmoPretrainTaskConfig(data=str(world), spm_model=str(tiny_spm), itc=False,
                                                           itm=False, mlm=False))


@pytest.mark.parametrize("switches,trained,untouched", [
    ({"itc": False}, {"itm_head.weight", "mlm_head.weight"}, {"vision_head.weight", "logit_scale"}),
    ({"itm": False, "mlm": False}, {"vision_head.weight", "logit_scale"}, {"itm_head.weight", "mlm_head.weight"}),
])
def test_vlmo_switches_drop_their_losses_and_gradients(switches, trained, untouched):
    from beit3_plugins.backbones import build_backbone
    from beit3_plugins.pretraining.objectives import MaskedDataModel, VlmoObjectives

    torch.manual_seed(0)
    model = MaskedDataModel(build_backbone("vlmo_tiny"), mim_target="pixel", vlmo_heads=True)
    image, ids = torch.randn(3, 3, 64, 64), torch.randint(4, 100, (3, 8))
    pad = torch.zeros(3, 8, dtype=torch.bool)
    targets = torch.full((3, 8), -100)
    targets[:, 2] = ids[:, 2]
    logs = {}
    loss = model.vlmo(image, ids, pad, ids, targets, logs, generator=torch.Generator().manual_seed(0),
                      switches=VlmoObjectives(**switches))
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained <= grads and not (untouched & grads)
    off = {"itc": "itc", "itm": "itm", "mlm": "vlmo_mlm"}
    assert {off[k] for k in switches}.isdisjoint(k[:-6] for k in logs if k.endswith("_count"))


# ---------------------------------------------------------------------------------------------- backbones
def test_standard_transformer_shares_everything_in_every_mode():
    from beit3_plugins.backbones import build_backbone

    torch.manual_seed(0)
    model = build_backbone("beit3_tiny_standard").eval()
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if ".vision." in n or ".text." in n]
    image, ids = torch.randn(2, 3, 64, 64), torch.randint(4, 100, (2, 6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    with torch.no_grad():
        fused = model.forward_fused(image, ids, padding_mask=pad).hidden
        text = model.forward_text(ids, padding_mask=pad).hidden
        vision = model.forward_vision(image).hidden
    assert fused.shape == (2, 65 + 6, 64) and text.shape == (2, 6, 64) and vision.shape == (2, 65, 64)
    # one FFN for all: a single token routed as text or as vision gets the same output
    x = torch.randn(1, 1, 64)
    from beit3_plugins.backbones import Routing

    with torch.no_grad():
        assert torch.equal(model.run_layer(0, x, Routing.text())[0], model.run_layer(0, x, Routing.vision())[0])
    with pytest.raises(ValueError, match="multiway=False"):
        from beit3_plugins.registry import BACKBONES

        BACKBONES.build("beit3_tiny", multiway=False)


# ---------------------------------------------------------------------------------------------- BEiT -> VLMo
@pytest.mark.parametrize("shared_rel_pos", [False, True], ids=["per-layer-rel-pos", "shared-rel-pos"])
def test_vlmo_from_beit_encodes_images_as_beit(tmp_path, shared_rel_pos):
    """The converted model's vision path reproduces timm's BEiT forward (the released BEiT key layout), and
    every expert starts as BEiT's FFN."""
    from beit3_plugins.backbones import build_backbone
    from beit3_plugins.pretraining.init_vlmo import init_vlmo_from_beit

    beit = tiny_beit(shared_rel_pos=shared_rel_pos)
    torch.save({"model": beit.state_dict()}, tmp_path / "beit.pth")
    summary = init_vlmo_from_beit(str(tmp_path / "beit.pth"), str(tmp_path / "vlmo.pth"), "vlmo_tiny")
    assert summary["experts"] == "all"
    model = build_backbone("vlmo_tiny", checkpoint=str(tmp_path / "vlmo.pth")).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_vision(image).hidden, beit.forward_features(image),
                                   rtol=1e-5, atol=1e-5)
    top = model.layers[3]
    for expert in (top.ffn.text, top.ffn.vl):
        assert torch.equal(expert.fc1.weight, top.ffn.vision.fc1.weight)
    assert torch.equal(top.ffn.vision.fc2.bias, beit.blocks[3].mlp.fc2.bias.detach())


def test_vlmo_from_beit_vision_only_and_bad_inputs(tmp_path):
    from beit3_plugins.backbones import build_backbone
    from beit3_plugins.pretraining.init_vlmo import init_vlmo_from_beit

    beit = tiny_beit()
    torch.save({"model": beit.state_dict()}, tmp_path / "beit.pth")
    init_vlmo_from_beit(str(tmp_path / "beit.pth"), str(tmp_path / "vlmo.pth"), "vlmo_tiny", experts="vision")
    model = build_backbone("vlmo_tiny", checkpoint=str(tmp_path / "vlmo.pth"))
    assert torch.equal(model.layers[0].ffn.vision.fc1.weight, beit.blocks[0].mlp.fc1.weight.detach())
    assert not torch.equal(model.layers[0].ffn.text.fc1.weight, model.layers[0].ffn.vision.fc1.weight)
    torch.save({"model": tiny_beit(depth=2).state_dict()}, tmp_path / "shallow.pth")
    with pytest.raises(ValueError, match=r"shallow.pth: the BEiT checkpoint has 2 layers"):
        init_vlmo_from_beit(str(tmp_path / "shallow.pth"), str(tmp_path / "x.pth"), "vlmo_tiny")
    torch.save({"model": build_backbone("beit3_tiny").state_dict()}, tmp_path / "beit3.pth")
    with pytest.raises(ValueError, match=r"beit3.pth: not a BEiT image checkpoint"):
        init_vlmo_from_beit(str(tmp_path / "beit3.pth"), str(tmp_path / "x.pth"), "vlmo_tiny")
    with pytest.raises(ValueError, match="VLMo architecture"):
        init_vlmo_from_beit(str(tmp_path / "beit.pth"), str(tmp_path / "x.pth"), "beit3_tiny")
