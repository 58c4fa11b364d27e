"""runtime.tune_malloc: freed tensor memory is reused instead of being faulted in again (fresh processes:
a malloc setting cannot be undone inside the process that made it)."""
import json
import subprocess
import sys

import pytest

from beit3_plugins.runtime import malloc_tuning_requested

# allocate, touch and free tensors of 4-16 MB with varying sizes, as a training step does; report the minor
# page faults per MB written
PROBE = """
import json, resource, sys, torch
from beit3_plugins.runtime import tune_malloc, tune_malloc_unless_disabled
applied = {"0": lambda: False, "1": tune_malloc, "entry": tune_malloc_unless_disabled}[sys.argv[1]]()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(1)
start, megabytes = faults(), 0
for i in range(60):
    mb = 4 + (i % 5) * 3
    t = torch.empty(mb * 2**18 + i * 1000)
    t.fill_(1.0)
    megabytes += mb
    del t
print(json.dumps({"applied": applied, "faults_per_mb": (faults() - start) / megabytes}))
"""


def probe(mode: str, env=None) -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                         check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_malloc_reuses_memory_instead_of_faulting_it_in_again():
    default, tuned = probe("0"), probe("1")
    assert not default["applied"] and tuned["applied"]
    # 4 KiB pages: 256 faults per MB would be every page of every tensor
    assert default["faults_per_mb"] > 60
    assert tuned["faults_per_mb"] < 0.5 * default["faults_per_mb"]


@pytest.mark.parametrize("value,expected", [(None, True), ("0", False), ("off", False), ("1", True), ("yes", True)])
def test_entry_points_can_be_told_not_to_tune(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("BEIT3_MALLOC_TUNING", raising=False)
    else:
        monkeypatch.setenv("BEIT3_MALLOC_TUNING", value)
    assert malloc_tuning_requested() is expected


@pytest.mark.slow
@pytest.mark.subprocess
def test_entry_point_helper_tunes_unless_switched_off():
    import os

    env = {k: v for k, v in os.environ.items() if k != "BEIT3_MALLOC_TUNING"}
    assert probe("entry", env)["applied"]
    assert not probe("entry", {**env, "BEIT3_MALLOC_TUNING": "0"})["applied"]
