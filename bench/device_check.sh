#!/usr/bin/env bash
# The GPU check, as one script for a lent machine (one H100/H200, Python 3.12 with its own PyTorch, no package
# registry, 64 MiB of carried files, 10 minutes a command):
#
#   bash bench/device_check.sh            on the GPU machine: results under $OUT (the device tool sets it)
#   bash bench/device_check.sh --dry-run  here, on the CPU: the same steps at tiny sizes (BEIT3_CUDA_TESTS_ON_CPU=1)
#
# Steps: (1) install what is carried — the wheels in .whl/ (bench/device_wheels.sh downloads them here for the
# device's Python) and this project, into /tmp/site, no network; (2) the `cuda` tests whose frameworks import
# there (others are listed as not run, with the import that failed); (3) the GPU benchmark (bench/gpu.py:
# torchscale, timm, generation, peak memory). Writes report.json and report.md under $OUT; exits non-zero
# when a test or the benchmark fails. Each step has its own time limit so the whole fits one 10-minute call.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ ${1:-} == --dry-run ]] && DRY=1
OUT=${OUT:-outputs/device_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[[ $DRY == 1 && -x .venv/bin/python ]] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
say() { printf '[device_check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
STATUS=0

# ------------------------------------------------------------------ (1) install, offline
SITE=$(mktemp -d /tmp/site.XXXX)
if compgen -G ".whl/*.whl" >/dev/null; then
  say "installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || STATUS=1
fi
say "installing this project into $SITE (no build isolation, no network)"
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . || STATUS=1
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
"$PY" - <<'EOF' | tee "$OUT/environment.txt"
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ["beit3_plugins.backbones", "timm", "torchscale", "hydra", "pycocoevalcap", "detectron2", "mmcv.ops",
             "mmseg", "fairseq"]:
    try:
        importlib.import_module(name)
        print("import ok  ", name)
    except Exception as err:  # noqa: BLE001 - reported, the step that needs it is not run
        print("import FAIL", name, type(err).__name__, str(err).splitlines()[0][:120])
EOF

# ------------------------------------------------------------------ (2) the cuda tests that can run here
[[ $DRY == 1 ]] && export BEIT3_CUDA_TESTS_ON_CPU=1
# the GPU machine runs the tests in a few minutes; the CPU dry run of the same tests takes much longer
TEST_TIMEOUT=${TEST_TIMEOUT:-$([[ $DRY == 1 ]] && echo 2400 || echo 300)}
can_import() { "$PY" -c "import $1" >/dev/null 2>&1; }
TESTS=(tests/backbones/test_cuda_backbone.py tests/backbones/test_compile.py)
NOT_RUN=()
add_if() {  # add_if MODULE TESTFILE...
  local module=$1; shift
  if can_import "$module"; then TESTS+=("$@"); else NOT_RUN+=("$* (needs $module)"); fi
}
add_if hydra tests/vl_tasks/test_cuda_training.py tests/pipelines/test_cuda_pipelines.py
add_if detectron2 tests/detection/test_cuda_detection.py
add_if mmseg tests/segmentation/test_cuda_segmentation.py
add_if fairseq tests/pretraining/test_cuda_fairseq.py
say "cuda tests: ${TESTS[*]}"
printf '%s\n' "${NOT_RUN[@]}" > "$OUT/tests_not_run.txt"
timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider -m cuda "${TESTS[@]}" --junitxml "$OUT/cuda_tests.xml" \
  2>&1 | tee "$OUT/cuda_tests.log" | tail -n 25
[[ ${PIPESTATUS[0]} == 0 ]] || STATUS=1

# ------------------------------------------------------------------ (3) the GPU benchmark
BENCH_ARGS=(--out "$OUT")
[[ $DRY == 1 ]] && BENCH_ARGS+=(--tiny)
if can_import torchscale; then
  timeout 240 "$PY" -m bench.gpu "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/gpu_bench.log" | tail -n 20
  [[ ${PIPESTATUS[0]} == 0 ]] || STATUS=1
else
  say "torchscale does not import: no benchmark (carry its wheel, see bench/device_wheels.sh)"; STATUS=1
fi

"$PY" - "$OUT" "$STATUS" "$DRY" <<'EOF'
import json, pathlib, sys, xml.etree.ElementTree as ET
out, status, dry = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
report = {"status": "ok" if status == 0 else "failed", "dry_run": dry,
          "environment": (out / "environment.txt").read_text().splitlines(),
          "tests_not_run": [l for l in (out / "tests_not_run.txt").read_text().splitlines() if l]}
if (out / "cuda_tests.xml").exists():
    suite = ET.parse(out / "cuda_tests.xml").getroot().find("testsuite")
    report["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
if (out / "gpu_bench.json").exists():
    report["benchmark"] = json.loads((out / "gpu_bench.json").read_text())
(out / "report.json").write_text(json.dumps(report, indent=1))
md = [f"## Device check ({'dry run on the CPU' if dry else report['environment'][0]})", "",
      f"status: {report['status']}; cuda tests: {report.get('tests')}", ""]
md += [f"- not run: {t}" for t in report["tests_not_run"]]
if (out / "gpu_bench.md").exists():
    md += ["", (out / "gpu_bench.md").read_text()]
(out / "report.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
say "done (status $STATUS); report under $OUT"
exit $STATUS
