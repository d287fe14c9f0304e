# pxpo-lite: every target sets up what it needs first (see scripts/setup.sh).
#   make lab      set up, then open the tutorials in JupyterLab
#   make test     set up (incl. headless Chromium), then run every test (unit, notebooks in smoke mode, browser)
#   make run      set up, then execute every notebook headless (full mode) into executed/, figures kept
#   make smoke    the same in smoke mode (SMOKE=True), fast
#   make pretrain rebuild the shipped weights (segmenter ~2 min, tiny diffusion model ~45 min on 2 cores)
#   make bench    run the benchmarks and write benchmarks/results/*.json
#   make sync     write every notebook's Colab badge, install line and kernelspec from pyproject/version
#   make strip    sync, then strip outputs from the notebooks (nbstripout) before committing
#   make student  write student/ from notebooks/ (scripts/make_student.py; plain python3, no venv, seconds)
#   make slides   a slide deck, one figure per slide, from make run's docs/figures/ -> docs/figures/slides.html
VENV ?= .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))

.PHONY: setup setup-test setup-dev lab test run smoke pretrain evaluate bench sync strip student slides clean

setup:
	EXTRAS=notebooks bash scripts/setup.sh

setup-test:
	EXTRAS=test bash scripts/setup.sh
	bash scripts/install_browser.sh || { [ -z "$$CI" ] && echo '!! Chromium could not be installed: the browser test will be skipped'; }

setup-dev:
	EXTRAS=dev bash scripts/setup.sh

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# two pytest-xdist workers, a test file each at a time, the slowest files first (tests/conftest.py SLOW_FIRST; they share each executed notebook and each cached venv: tests/conftest.py,
# scripts/make_venv.py); TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: setup-test
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS)

run: setup
	$(PY) scripts/run_notebooks.py --out executed $(NOTEBOOKS)

smoke: setup
	$(PY) scripts/run_notebooks.py --smoke --out executed/smoke $(NOTEBOOKS)

pretrain: setup
	$(PY) -m pxpo_lite.pretrain segmenter
	$(PY) -m pxpo_lite.pretrain diffusion
	$(PY) -m pxpo_lite.pretrain flow
	$(PY) -m pxpo_lite.evaluate --out docs

evaluate: setup
	$(PY) -m pxpo_lite.evaluate --out docs

bench: setup
	$(PY) benchmarks/run_all.py

sync: setup
	$(PY) scripts/sync_notebooks.py

# nbstripout keeps cell tags (the `parameters` cell) and cell ids; it also drops papermill's metadata.
strip: setup-dev
	$(PY) scripts/sync_notebooks.py
	$(VENV)/bin/nbstripout --keep-id --keep-metadata-keys "cell.metadata.tags" \
		--extra-keys "metadata.papermill cell.metadata.papermill" $(NOTEBOOKS)

# Plain python3 and the standard library: no venv, no torch, no nbformat (a notebook is JSON).
student:
	python3 scripts/make_student.py

# One slide per figure that `make run` exported to docs/figures/, titled by notebook and section.
slides:
	python3 scripts/make_slides.py

clean:
	rm -rf executed test-artifacts .pytest_cache
