"""Bad input to the VL trainer, refused before the first step with the real cause: unknown config keys
(Hydra '+key=' additions too), a missing data.root / tokenizer / evaluation images, and an output directory
that holds another task's run. Catalogue: docs/reliability.md."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from beit3_plugins.vl_tasks.config import SECTIONS, UnknownConfigKeyError
from beit3_plugins.vl_tasks.train import CONFIG_DIR, compose_config, run


def _overrides(root, spm, out, *extra, task="vqa"):
    return [f"task={task}", "model=beit3_tiny", "preset=cpu_tiny", f"data.root={root}", f"data.tokenizer={spm}",
            f"train.output_dir={out}", "train.tensorboard=false", "train.epochs=1", "train.eval_every_epochs=0",
            *extra]


def _nothing_trained(out: Path) -> bool:
    return not (out / "metrics.csv").exists() and not (out / "checkpoints" / "last.pt").exists()


def test_the_schema_names_every_key_of_the_config_tree():
    base = yaml.safe_load((CONFIG_DIR / "vl_train.yaml").read_text())
    models = [yaml.safe_load(p.read_text()) for p in (CONFIG_DIR / "model").glob("*.yaml")]
    fields = {name: {f.name for f in dataclasses.fields(schema)} for name, schema in SECTIONS.items()}
    assert set(base["train"]) == fields["train"] and set(base["data"]) == fields["data"]
    assert set().union(*models) == fields["model"]


@pytest.mark.parametrize("extra, says", [
    ("+train.epoch=1", r"train\.epoch \(did you mean train\.epochs\?\)"),
    ("+data.tokeniser=x.spm", r"data\.tokeniser \(did you mean data\.tokenizer\?\)"),
    ("+model.chekpoint=a.pth", r"model\.chekpoint \(did you mean model\.checkpoint\?\)"),
    ("+trian.lr=1", r"unknown config key\(s\): trian \(did you mean train\?\)"),
])
def test_unknown_keys_are_refused_even_when_added_with_plus(tmp_path, data_world, tiny_spm, extra, says):
    root, _ = data_world
    out = tmp_path / "run"
    with pytest.raises(UnknownConfigKeyError, match=says):
        run(compose_config(_overrides(root, tiny_spm, out, extra)))
    assert not out.exists()


def test_a_missing_data_root_is_named(tmp_path, tiny_spm):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=f"data.root={tmp_path / 'nowhere'} is not a directory"):
        run(compose_config(_overrides(tmp_path / "nowhere", tiny_spm, out)))
    assert _nothing_trained(out)


@pytest.mark.parametrize("tokenizer", [None, "null"])
def test_a_missing_tokenizer_is_named_before_the_data_loader(tmp_path, data_world, tokenizer):
    root, _ = data_world
    out = tmp_path / "run"
    overrides = [o for o in _overrides(root, "x", out) if not o.startswith("data.tokenizer")]
    if tokenizer:
        overrides.append(f"data.tokenizer={tokenizer}")
    with pytest.raises(ValueError, match=r"task vqa encodes text: set data.tokenizer="):
        run(compose_config(overrides))
    assert _nothing_trained(out)
    with pytest.raises(FileNotFoundError, match="data.tokenizer=.*missing.spm: file not found"):
        run(compose_config(_overrides(root, tmp_path / "missing.spm", out)))


@pytest.mark.slow
def test_missing_evaluation_images_fail_before_the_first_step(tmp_path, data_world, tiny_spm):
    root, _ = data_world
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="no readable record"):
        run(compose_config(_overrides(root, tiny_spm, out, "train.max_steps=2", f"+task.val_images={tmp_path}/none")))
    assert _nothing_trained(out)


@pytest.mark.slow
def test_an_output_dir_holding_another_tasks_run_is_named(tmp_path, data_world, tiny_spm):
    root, _ = data_world
    out = tmp_path / "shared_dir"
    first = run(compose_config(_overrides(root, tiny_spm, out, "train.max_steps=1", "train.batch_size=4",
                                          task="retrieval")))
    assert first["steps"] == 1 and (out / "checkpoints" / "last.pt").is_file()
    with pytest.raises(ValueError, match=rf"train.output_dir={out} holds a run of task retrieval .*this run is task "
                                         "vqa.*train.resume=false"):
        run(compose_config(_overrides(root, tiny_spm, out, "train.max_steps=1")))
