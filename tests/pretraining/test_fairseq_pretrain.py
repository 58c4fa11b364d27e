"""The fairseq plugin through the real CLIs: the tiny recipe learns (held-out masked-token accuracy vs
chance) and exports a backbone checkpoint; a killed run resumes to the same weights; a 2-process
gloo run trains through the documented torchrun launch; bad input fails clearly. The learning run is
the shipped recipe as 2 gloo ranks over shards (issue 17)."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from fairseq_run import BIN, ENV, ROOT, USER_DIR, model_weights, run, tiny_args  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def recipe_flags(config_name, **overrides):
    """fairseq-train flags holding a shipped hydra recipe's settings (``configs/pretrain/<name>.yaml``), so a
    torchrun launch of ``tools/fairseq_train_ddp.sh`` (which runs fairseq-train) trains the recipe as
    written; ``overrides`` (``group.key=value`` as keyword ``group__key``) replace single settings."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "configs" / "pretrain" / f"{config_name}.yaml")
    cfg.pop("hydra", None)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    name_flags = {"task": "--task", "model": "--arch", "optimizer": "--optimizer", "lr_scheduler": "--lr-scheduler",
                  "criterion": "--criterion"}
    flags = [str(cfg.task.data)]
    for group, settings in OmegaConf.to_container(cfg, resolve=True).items():
        if not isinstance(settings, dict):
            flags += [name_flags[group], str(settings)]
            continue
        for key, value in settings.items():
            if (key == "data" and group == "task") or value is None:  # None: the setting is unset (user_dir)
                continue
            flag = name_flags[group] if key == "_name" else "--" + key.replace("_", "-")
            if isinstance(value, bool):
                flags += [flag] if value else []
            else:
                flags += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return flags


def test_tiny_recipe_learns_over_shards_on_two_ranks_and_exports(data_world, world_shards, tiny_spm, tmp_path):
    """The shipped tiny recipe (configs/pretrain/beit3_tiny_cpu.yaml, reading the make-shards output) as 2 gloo
    processes through the documented ``torchrun --no-python tools/fairseq_train_ddp.sh`` launch, one thread
    each (OMP_NUM_THREADS=1): the training loss falls, held-out masked-token accuracy ends well above chance
    and the export loads. Each rank reads its own share of every shard batch, so an update sees 2 x 16 units.
    Thresholds: ``chance_majority`` is the held-out accuracy of always predicting the most frequent held-out
    target, the score of a model that learned only the label frequencies; text must beat it by 10 points and
    image codes by 1.5x (codes are far more spread than words, so a relative bar), and image codes must also
    beat uniform guessing over the codebook by 5x. The run settings are the recipe's own (``recipe_flags``),
    none is changed for 2 ranks."""
    from beit3_plugins.backbones import build_backbone
    from beit3_plugins.pretraining.fairseq_plugin.export import export_checkpoint, heldout_accuracy, load_pretrain_checkpoint

    world, _ = data_world
    save = tmp_path / "ckpt"
    flags = recipe_flags("beit3_tiny_cpu", task__data=str(world), task__spm_model=str(tiny_spm),
                         checkpoint__save_dir=str(save), dataset__disable_validation=True,
                         checkpoint__save_interval_updates=0)
    out = run([BIN / "torchrun", "--nproc_per_node", "2", "--master_port", "29761", "--no-python",
               ROOT / "tools" / "fairseq_train_ddp.sh", *flags, "--distributed-backend", "gloo",
               "--distributed-world-size", "2", "--ddp-backend", "legacy_ddp"], timeout=900)
    assert "distributed init (rank 0)" in out and "distributed init (rank 1)" in out
    logs = [json.loads(line.split("| train_inner | ", 1)[1]) for line in out.splitlines() if "| train_inner | " in line]
    assert int(logs[-1]["bsz"]) == 2 * 16 * 4        # 2 ranks x 16 units x (2 texts + image + pair) per update
    losses = [float(log["loss"]) for log in logs]
    assert len(losses) >= 5 and losses[-1] < 0.8 * losses[0]
    from fairseq import checkpoint_utils

    assert checkpoint_utils.load_checkpoint_to_cpu(str(save / "checkpoint_last.pt"))["optimizer_history"][-1][
        "num_updates"] == 250                          # the recipe's max_update (logged every 20)
    model, task = load_pretrain_checkpoint(str(save / "checkpoint_last.pt"))
    acc = heldout_accuracy(model, task)
    for kind in ("text_mlm", "image_mim", "pair_text", "pair_image"):
        assert kind in acc, acc
    assert acc["text_mlm"]["accuracy"] > acc["text_mlm"]["chance_majority"] + 0.1, acc
    assert acc["image_mim"]["accuracy"] > 1.5 * acc["image_mim"]["chance_majority"], acc
    assert acc["image_mim"]["accuracy"] > 5 * acc["image_mim"]["chance_uniform"], acc
    print("held-out accuracy", json.dumps(acc), "losses", losses)
    summary = export_checkpoint(str(save / "checkpoint_last.pt"), str(tmp_path / "backbone.pth"))
    assert summary["layout"] == "released"
    backbone = build_backbone("beit3_tiny", checkpoint=str(tmp_path / "backbone.pth"),
                              vocab_size=model.core.backbone.cfg.vocab_size)
    assert {"mlm_head.weight", "mim_head.weight"} <= set(backbone.load_report.heads)
    ref = model.core.backbone.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in backbone.state_dict().items())
    described = build_backbone("beit3_tiny", pretrained=str(tmp_path / "backbone.pth"))  # its model_config alone
    assert described.cfg.vocab_size == model.core.backbone.cfg.vocab_size
    assert all(torch.equal(v, ref[k]) for k, v in described.state_dict().items())


RESUME_ARGS = ["--batch-size", "4", "--max-update", "24", "--disable-validation", "--save-interval-updates", "3"]


@pytest.fixture(scope="module")
def uninterrupted_weights(data_world, tiny_spm, tmp_path_factory):
    world, _ = data_world
    save_dir = tmp_path_factory.mktemp("straight")
    run([BIN / "fairseq-train", *tiny_args(world, tiny_spm, save_dir, *RESUME_ARGS)])
    return model_weights(save_dir / "checkpoint_last.pt")


@pytest.mark.parametrize("torn_last_copy", [False, True], ids=["resume", "torn-checkpoint_last"])
def test_killed_run_resumes_to_the_same_weights(data_world, tiny_spm, tmp_path, uninterrupted_weights,
                                                 torn_last_copy):
    """SIGKILL after the first mid-epoch checkpoint, then the same command again. ``torn_last_copy``: the kill
    fell inside fairseq's non-atomic copy to checkpoint_last.pt (simulated by truncating it); the same command
    resumes from the atomically written checkpoint_E_U.pt it was copied from (the plugin's reader,
    ``fairseq_plugin/safe_checkpoints.py``)."""
    world, _ = data_world
    cmd = [str(BIN / "fairseq-train"), *tiny_args(world, tiny_spm, tmp_path / "killed", *RESUME_ARGS)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "checkpoint_last.pt"
    deadline = time.time() + 240
    # fairseq writes checkpoint_E_U.pt atomically, then *copies* it to checkpoint_last.pt (not atomic): wait
    # until the copy is whole (a zip with its central directory)
    while not (last.exists() and zipfile.is_zipfile(last)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from fairseq import checkpoint_utils

    interrupted_at = checkpoint_utils.load_checkpoint_to_cpu(str(last))["optimizer_history"][-1]["num_updates"]
    assert 0 < interrupted_at < 24
    if torn_last_copy:
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        assert not zipfile.is_zipfile(last)
    out = run(cmd)
    assert "Loaded checkpoint" in out or "loaded checkpoint" in out
    a, b = uninterrupted_weights, model_weights(last)
    assert a.keys() == b.keys()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert diff == 0.0, f"resumed weights differ by {diff} (interrupted at update {interrupted_at})"


def test_two_process_gloo_run(data_world, tiny_spm, tmp_path):
    """Documented launch: torchrun --no-python tools/fairseq_train_ddp.sh ... (VLMo objectives, so the
    ITC logits and ITM hard negatives are gathered across the two ranks; gradients accumulated over 2
    batches per update)."""
    world, _ = data_world
    cmd = [BIN / "torchrun", "--nproc_per_node", "2", "--master_port", "29731", "--no-python",
           ROOT / "tools" / "fairseq_train_ddp.sh",
           *tiny_args(world, tiny_spm, tmp_path / "ddp", "--batch-size", "4", "--max-update", "6",
                      "--disable-validation", "--distributed-backend", "gloo", "--distributed-world-size", "2",
                      "--update-freq", "2",
                      "--ddp-backend", "legacy_ddp", "--mim-target", "pixel", task="vlmo_pretrain", arch="vlmo_tiny")]
    out = run(cmd)
    assert "distributed init (rank 0)" in out and "distributed init (rank 1)" in out
    logs = [json.loads(line.split("| train_inner | ", 1)[1]) for line in out.splitlines() if "| train_inner | " in line]
    assert logs and int(logs[-1]["num_updates"]) == 6
    assert int(logs[-1]["bsz"]) == 16                      # 2 ranks x 2 accumulated batches x 4 pairs per update
    assert int(logs[-1]["itc_acc"].split(".")[0]) >= 0 and "itm_loss" in logs[-1]
    assert (tmp_path / "ddp" / "checkpoint_last.pt").exists()


def _shard_fractions(out):
    """{rank: fraction of the trainable parameter elements the rank holds} from the sharding report."""
    import re

    return {int(m.group(1)): float(m.group(2)) for m in
            re.finditer(r"rank (\d) holds \d+ of \d+ trainable parameter elements \(([\d.]+)\)", out)}


def test_sharded_two_process_run_matches_ddp_resumes_and_exports(data_world, tiny_spm, tmp_path):
    """Sharded data parallelism (torch FSDP2 through --shard-parameters, launched with SHARDED=1
    tools/fairseq_train_ddp.sh) with activation checkpointing, 2 gloo processes on CPU: each rank holds
    half of the parameters, the loss falls, a run stopped at update 3 and resumed reaches the weights and
    optimizer state of an unsharded legacy_ddp run of 6 updates up to float rounding (same accumulated,
    clipped gradients, same AdamW steps), and the checkpoint (full tensors) exports into the backbone."""
    from beit3_plugins.backbones import build_backbone
    from beit3_plugins.pretraining.fairseq_plugin.export import export_checkpoint
    from fairseq import checkpoint_utils

    world, _ = data_world

    def launch(save, port, max_update, sharded):
        cmd = [BIN / "torchrun", "--nproc_per_node", "2", "--master_port", str(port), "--no-python",
               ROOT / "tools" / "fairseq_train_ddp.sh",
               *tiny_args(world, tiny_spm, save, "--batch-size", "4", "--max-update", str(max_update),
                          "--disable-validation", "--distributed-backend", "gloo", "--distributed-world-size", "2",
                          "--ddp-backend", "legacy_ddp", "--optimizer", "beit3_adamw", "--warmup-updates", "2",
                          "--update-freq", "2", "--clip-norm", "0.5",  # accumulation + clipping (gnorm ~4-9)
                          *(["--checkpoint-activations"] if sharded else []))]
        proc = subprocess.run(cmd, env={**ENV, "SHARDED": "1" if sharded else "0"}, cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return proc.stdout + proc.stderr

    reference = launch(tmp_path / "ddp", 29733, 6, sharded=False)
    assert not _shard_fractions(reference)
    first = launch(tmp_path / "fsdp", 29734, 3, sharded=True)
    fractions = _shard_fractions(first)
    assert set(fractions) == {0, 1} and all(0.45 < f < 0.55 for f in fractions.values()), fractions
    resumed = launch(tmp_path / "fsdp", 29735, 6, sharded=True)
    assert "Loaded checkpoint" in resumed and "(epoch 1 @ 3 updates)" in resumed
    losses = [float(json.loads(line.split("| train_inner | ", 1)[1])["loss"])
              for line in (first + resumed).splitlines() if "| train_inner | " in line]
    assert len(losses) == 6 and losses[-1] < losses[0]
    sharded = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "fsdp" / "checkpoint_last.pt"))
    plain = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "ddp" / "checkpoint_last.pt"))
    assert sharded["optimizer_history"][-1]["num_updates"] == 6
    assert sharded["model"].keys() == plain["model"].keys()
    for key, value in plain["model"].items():
        assert type(sharded["model"][key]) is torch.Tensor and sharded["model"][key].shape == value.shape
        torch.testing.assert_close(sharded["model"][key], value, rtol=0, atol=1e-6, msg=key)
    opt_sharded, opt_plain = sharded["last_optimizer_state"]["state"], plain["last_optimizer_state"]["state"]
    assert opt_sharded.keys() == opt_plain.keys()
    for index, entry in opt_plain.items():
        torch.testing.assert_close(opt_sharded[index]["exp_avg_sq"], entry["exp_avg_sq"], rtol=1e-4, atol=1e-10)
    summary = export_checkpoint(str(tmp_path / "fsdp" / "checkpoint_last.pt"), str(tmp_path / "backbone.pth"))
    assert summary["layout"] == "released"
    vocab = sharded["model"]["core.backbone.text_embed.weight"].shape[0]
    backbone = build_backbone("beit3_tiny", checkpoint=str(tmp_path / "backbone.pth"), vocab_size=vocab)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, sharded["model"][f"core.backbone.{key}"]), key


def test_bad_inputs_fail_clearly(data_world, tiny_spm, tmp_path, capsys):
    """Empty corpus, wrong vocabulary size (errors), over-long text and unreadable images (counted)."""
    import shutil

    import numpy as np

    from beit3_plugins.pretraining.fairseq_plugin.tasks import Beit3MdmTask, Beit3MdmTaskConfig
    from beit3_plugins.pretraining.data import EmptyCorpusError, ImageSource, TextSource
    from beit3_plugins.tokenizer import Beit3Tokenizer

    world, _ = data_world
    tok = Beit3Tokenizer(str(tiny_spm))
    with pytest.raises(EmptyCorpusError, match="no non-empty lines"):
        TextSource(["", "  "], tok, 32, 1024)
    with pytest.raises(ValueError, match="vocab_size >= "):
        TextSource(["a red circle"], tok, 32, model_vocab_size=10)
    src = TextSource(["a red circle " * 40], tok, 16, 1024)
    assert len(src.get(0, np.random.default_rng(0))["ids"]) == 16 and src.skips.count("truncated_text") == 1
    images = tmp_path / "images"
    shutil.copytree(world / "imagenet" / "val", images)
    broken = sorted(images.rglob("*.JPEG"))[0]
    broken.write_bytes(b"not an image")
    from beit3_plugins.transforms import build_image_transform
    from beit3_plugins.pretraining.data import list_images

    paths = list_images([str(images)])
    source = ImageSource(paths, build_image_transform("vl", False, 64), (8, 8))
    item = source.get(paths.index(str(broken)), np.random.default_rng(0))
    assert item["image"].shape == (3, 64, 64) and source.skips.count("corrupt_image") == 1
    with pytest.raises(EmptyCorpusError, match="no image files"):
        ImageSource([], None, (8, 8))
    empty = tmp_path / "empty_world"
    (empty / "text").mkdir(parents=True)
    (empty / "text" / "corpus.txt").write_text("\n\n")
    # the full MDM stage also needs images and pairs: every missing input is named at once, exit status 2
    with pytest.raises(SystemExit) as exited:
        Beit3MdmTask.setup_task(Beit3MdmTaskConfig(data=str(empty), spm_model=str(tiny_spm), image_size=64,
                                                   patch_size=8, valid_text_lines=0))
    assert exited.value.code == 2 and "3 input(s) not found" in capsys.readouterr().err
    # the text-only stage reads only the (empty) corpus: an error that says it is empty
    task = Beit3MdmTask.setup_task(Beit3MdmTaskConfig(data=str(empty), spm_model=str(tiny_spm), image_size=64,
                                                      patch_size=8, valid_text_lines=0, stage="language"))
    with pytest.raises(EmptyCorpusError):
        task.load_dataset("train")
    # the CLI refuses a model whose text embedding is smaller than the tokenizer's vocabulary
    proc = subprocess.run([BIN / "fairseq-train", *tiny_args(world, tiny_spm, tmp_path / "v", "--batch-size", "4",
                                                             "--max-update", "1", "--vocab-size", "50")],
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "vocab-size >=" in proc.stderr


def test_every_batch_mixes_the_three_kinds_in_proportion(data_world, tiny_spm):
    from beit3_plugins.pretraining.fairseq_plugin.tasks import Beit3MdmTask, Beit3MdmTaskConfig
    from beit3_plugins.pretraining.masking import IGNORE_INDEX

    world, _ = data_world
    task = Beit3MdmTask.setup_task(Beit3MdmTaskConfig(
        data=str(world), spm_model=str(tiny_spm), image_size=64, patch_size=8, max_text_len=32, min_mask_block=4,
        texts_per_unit=3, images_per_unit=2, pairs_per_unit=1, seed=5))
    task.load_dataset("train")
    ds = task.datasets["train"]
    ds.set_round_to(4 * 2)
    assert len(ds) % 8 == 0 and len(ds) >= ds.natural_units
    batch = ds.collater([ds[i] for i in range(4)])["net_input"]
    assert batch["text"]["ids"].shape[0] == 12 and batch["image"]["image"].shape == (8, 3, 64, 64)
    assert batch["pair"]["image"].shape[0] == 4
    assert batch["image"]["mask"].sum(1).tolist() == [round(0.4 * 64)] * 8
    # separate masking: each pair has masked text or masked patches, never both
    text_masked = (batch["pair"]["targets"] != IGNORE_INDEX).any(1)
    image_masked = batch["pair"]["mask"].any(1)
    assert not (text_masked & image_masked).any() and (text_masked | image_masked).all()
    # the same index gives the same example (resume), another epoch a different one
    again = ds.collater([ds[i] for i in range(4)])["net_input"]
    assert torch.equal(again["image"]["image"], batch["image"]["image"])
    ds.set_epoch(2)
    assert not torch.equal(ds.collater([ds[i] for i in range(4)])["net_input"]["image"]["image"],
                           batch["image"]["image"])


def test_vlmo_task_masks_whole_words(data_world, tiny_spm):
    """--whole-word-masking reaches the VLMo pair text: no word is partly predicted."""
    from beit3_plugins.pretraining.fairseq_plugin.tasks import VlmoPretrainTask, VlmoPretrainTaskConfig
    from beit3_plugins.pretraining.masking import IGNORE_INDEX, word_start_table

    world, _ = data_world
    task = VlmoPretrainTask.setup_task(VlmoPretrainTaskConfig(
        data=str(world), spm_model=str(tiny_spm), image_size=64, patch_size=8, min_mask_block=4, seed=5,
        whole_word_masking=True))
    task.load_dataset("train")
    ds = task.datasets["train"]
    pair = ds.collater([ds[i] for i in range(32)])["net_input"]["pair"]
    starts = torch.from_numpy(word_start_table(task.tokenizer))
    partial = whole = 0
    for clean, targets in zip(pair["clean_ids"], pair["targets"]):
        chosen = targets != IGNORE_INDEX
        real = clean >= 4
        word_id = torch.cumsum(starts[clean] & real, 0)
        for w in word_id[real].unique():
            sel = chosen[real & (word_id == w)]
            partial += bool(sel.any() and not sel.all())
            whole += bool(sel.all() and len(sel) > 1)
    assert partial == 0 and whole > 0
