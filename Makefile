# The two commands of the README:
#   make demo   set up the venv if needed, then run the end-to-end demo on generated data
#   make test   set up the venv if needed, then run the whole test suite
#   make test-quick   the quick loop: every test not marked slow (see pytest.ini)
PY := .venv/bin/python
OUT ?= outputs/demo
# pytest-xdist workers for `make test` (tests/conftest.py: one thread each, a file per worker at a time)
TEST_WORKERS ?= 2

.PHONY: setup demo test test-quick bench
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py --out $(OUT)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile tests

test-quick: setup
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests

bench: setup
	$(PY) -m bench.run_all
