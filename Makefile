# EfficientDet (effdet) developer tasks. Everything runs through .venv/bin/python;
# no activation needed. `make venv` is cheap when nothing changed.
#   make run ARGS='model=efficientdet-d0 trainer.num_epochs=1'
#   make test PYTEST_ARGS='-m "not slow"'
#   EFFDET_DEVICE=gpu make venv      (tensorflow[and-cuda] instead of tensorflow-cpu)
#   EFFDET_SKIP_HOROVOD=1 make venv  (no Horovod: single-process only)

PY          := .venv/bin/python
ARGS        ?=
PYTEST_ARGS ?=

.PHONY: venv run test bench clean distclean

venv:
	bash tools/venv.sh

run: venv
	$(PY) run.py $(ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	@set -e; found=0; \
	for f in benchmarks/*.py; do \
	  [ -e "$$f" ] || continue; found=1; \
	  echo "[bench] $$f"; \
	  $(PY) "$$f"; \
	done; \
	[ $$found = 1 ] || echo "[bench] no benchmarks/*.py found"

clean:
	rm -rf outputs/ multirun/ .pytest_cache/

distclean: clean
	rm -rf .venv/
