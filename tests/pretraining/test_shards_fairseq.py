"""fairseq over shards: 2 gloo processes x 2 loader workers, SIGKILLed mid-epoch, resume to the weights of
an uninterrupted run (the stream position is fairseq's iterator state in the checkpoint); skip counts
made in forked workers reach the log, summed across ranks."""
import json
import os
import signal
import subprocess
import time
import zipfile

import pytest

from fairseq_run import BIN, ENV, ROOT, model_weights, run, tiny_args

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

SHARD_ARGS = ["--text-data", "shards/text-*.txt", "--image-data", "shards/images-*.tar",
              "--pair-data", "shards/pairs-*.tar", "--valid-text-data", "shards/text-valid.txt",
              "--valid-pair-data", "coco/dataset_coco.json", "--num-workers", "2",
              "--batch-size", "4", "--max-update", "8", "--disable-validation", "--save-interval-updates", "3",
              "--distributed-backend", "gloo", "--distributed-world-size", "2", "--ddp-backend", "legacy_ddp"]


def _command(world, spm, save, port):
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port), "--no-python",
            str(ROOT / "tools" / "fairseq_train_ddp.sh"), *tiny_args(world, spm, save, *SHARD_ARGS)]


def _kill_launch(torchrun_pid):
    """SIGKILL torchrun, both ranks and their loader workers: torch elastic starts each rank in a new
    session, so each rank's process group is killed as well as torchrun's."""
    ranks = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == torchrun_pid:
            ranks.append(int(entry))
    os.killpg(torchrun_pid, signal.SIGKILL)
    for rank in ranks:
        try:
            os.killpg(rank, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_shards_two_ranks_two_workers_killed_run_resumes_exactly(data_world, world_shards, tiny_spm, tmp_path):
    world, _ = data_world
    straight = run(_command(world, tiny_spm, tmp_path / "straight", 29741), timeout=600)
    logs = [json.loads(line.split("| train_inner | ", 1)[1]) for line in straight.splitlines()
            if "| train_inner | " in line]
    assert int(logs[-1]["num_updates"]) == 8 and int(logs[-1]["bsz"]) == 2 * 4 * 3   # 2 ranks x 4 units x (text + image + pair)
    # the last pair / image shards are short: their repeats are counted in the workers and reach the log
    assert sum(float(log.get("skip_repeated_in_short_shard", 0)) for log in logs) > 0

    save = tmp_path / "killed"
    proc = subprocess.Popen(_command(world, tiny_spm, save, 29742), env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last, deadline = save / "checkpoint_last.pt", time.time() + 300
    while not (last.exists() and zipfile.is_zipfile(last)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    _kill_launch(proc.pid)
    proc.wait()
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(last))
    interrupted_at = state["optimizer_history"][-1]["num_updates"]
    assert 0 < interrupted_at < 8
    assert state["extra_state"]["train_iterator"]["iterations_in_epoch"] > 0       # mid-epoch position saved
    resumed = run(_command(world, tiny_spm, save, 29743), timeout=600)
    assert "Loaded checkpoint" in resumed
    a, b = model_weights(tmp_path / "straight" / "checkpoint_last.pt"), model_weights(last)
    assert a.keys() == b.keys()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert diff == 0.0, f"resumed weights differ by {diff} (interrupted at update {interrupted_at})"


def test_shards_binarized_text_from_fairseq_preprocess(data_world, tiny_spm, tmp_path):
    """Real fairseq-preprocess output (mmap) with the dict.txt of make-shards --fairseq-dict: every sentence
    comes back as the tokenizer's own ids; a foreign dictionary is refused."""
    import numpy as np

    from beit3_plugins.data.readers import SkipCounter
    from beit3_plugins.pretraining.fairseq_plugin.datasets import BinarizedTextSource
    from beit3_plugins.pretraining.masking import IGNORE_INDEX, TokenMaskingConfig
    from beit3_plugins.tokenizer import Beit3Tokenizer

    world, _ = data_world
    tok = Beit3Tokenizer(str(tiny_spm))
    lines = [line for line in (world / "text" / "corpus.txt").read_text().splitlines() if line.strip()][:50]
    (tmp_path / "pieces.txt").write_text("".join(" ".join(tok.pieces(line)) + "\n" for line in lines))
    run([BIN / "beit3-plugins", "make-shards", "--fairseq-dict", tiny_spm, "--out", tmp_path / "dict"])
    run([BIN / "fairseq-preprocess", "--only-source", "--srcdict", tmp_path / "dict" / "dict.txt", "--trainpref",
         tmp_path / "pieces.txt", "--destdir", tmp_path / "bin", "--workers", "1", "--dataset-impl", "mmap"])
    source = BinarizedTextSource(str(tmp_path / "bin" / "train"), tok, 64, tok.vocab_size, TokenMaskingConfig(),
                                 SkipCounter())
    assert len(source) == len(lines)
    for i, line in enumerate(lines):
        item = source.get(i, np.random.default_rng(i))
        clean = np.where(item["targets"] != IGNORE_INDEX, item["targets"], item["ids"])
        assert clean.tolist() == tok.encode(line, max_length=64, pad=False).input_ids
    (tmp_path / "bin" / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(200)))
    import pytest

    with pytest.raises(ValueError, match="not the tokenizer's dictionary"):
        BinarizedTextSource(str(tmp_path / "bin" / "train"), tok, 64, tok.vocab_size, TokenMaskingConfig(), SkipCounter())
