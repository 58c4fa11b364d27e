# The two commands of the README:
#   make demo   set up the venv if needed, then run the end-to-end demo on generated data
#   make test   set up the venv if needed, then run the whole test suite
PY := .venv/bin/python
OUT ?= outputs/demo

.PHONY: setup demo test bench
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py --out $(OUT)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: setup
	$(PY) bench/run_all.py
