# Everything one can do with this course, in one place. `make help` lists it.
# Students: make setup, make lab.  Instructors: make demo, make release, make references, make grade.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# nbgrader shells out to tools installed beside it (alembic), so the venv comes first on PATH.
export PATH := $(BIN):$(PATH)

# Debian packages: the grading sandbox, and the browser, offline MathJax and PDF tools behind make pdf.
SYSTEM_PACKAGES = bubblewrap chromium libjs-mathjax poppler-utils

# The environment is a prerequisite of every target that runs Python: built on first use, and again when the pinned
# requirements change (make setup also rebuilds it on demand).
READY := $(VENV)/.ready
REQUIREMENTS := $(wildcard requirements.txt requirements.lock pyproject.toml)

SUBMISSIONS ?= $(CURDIR)/submitted
DEMO ?= $(CURDIR)/demo
comma := ,
GRADING_OUTPUT ?= $(CURDIR)
ASSIGNMENTS = $(notdir $(wildcard solutions/[0-9]*))

.PHONY: help setup test demo lab check pdf run release references grade export report student-bundle gradescope dask-scheduler dask-worker formgrader lock clean data

help: ## List the things one can do
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: ## Create .venv with the pinned course environment and the shared package
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || printf '%s ' $$p; done); \
		[ -z "$$missing" ] || apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 || \
			{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; }; \
	else \
		command -v bwrap >/dev/null || echo "note: instructors grading on Linux need bubblewrap (bwrap) to sandbox students' kernels"; \
		command -v chromium >/dev/null || command -v google-chrome >/dev/null || [ -d "/Applications/Google Chrome.app" ] || \
			echo "note: make pdf needs Chromium or Chrome (Debian/Ubuntu: sudo apt-get install chromium libjs-mathjax)"; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/python -m shared.pdf --install-config
	@$(BIN)/python -c "import torch, nbgrader, shared; print('ready: torch', torch.__version__, '| device', shared.pick_device())"
	@touch $(READY)

$(READY): $(REQUIREMENTS)
	@$(MAKE) --no-print-directory setup

test: $(READY) ## Run the test suite (notebooks in fast mode)
	COURSE_FAST=1 $(BIN)/python -m pytest

demo: $(READY) ## Grade a small generated class into demo/ (right, blank, catalogued mistakes, a forbidden built-in, hostile)
	@test -d autograder || { echo "autograder/ is not part of the student bundle"; exit 1; }
	$(BIN)/python tools/demo.py build "$(DEMO)"
	@$(MAKE) --no-print-directory grade SUBMISSIONS="$(DEMO)/submitted" GRADING_OUTPUT="$(DEMO)"
	@$(BIN)/python tools/demo.py summary "$(DEMO)"

data: $(READY) ## Prepare data/tiny/ (TinyStories splits); offline: TINYSTORIES_DIR=/path/to/folder make data
	$(BIN)/python $(if $(wildcard tools/prepare_data.py),tools/prepare_data.py,-m shared.tinystories)

lab: $(READY) ## Open the notebooks in JupyterLab
	$(BIN)/jupyter lab notebooks

check: $(READY) ## Run notebooks headless and print each exercise's visible checks (NB=path/to.ipynb, FULL=1 full-size training)
	@$(BIN)/python -m shared.notebook_check $(if $(filter 1,$(FULL)),--full) "$(or $(NB),notebooks)"

pdf: $(READY) ## Export notebooks to PDF, each next to its notebook (NB=path/to.ipynb, run first; default: every notebook in notebooks/; FORCE=1)
	@$(BIN)/python -m shared.pdf $(if $(filter 1,$(FORCE)),--force) $(NB)

run: $(READY) ## Run a notebook top to bottom and save it with its outputs, as Run All Cells would (NB=path/to.ipynb; COURSE_FAST=1 quick)
	@$(BIN)/python -m shared.run_notebook $(if $(NB),"$(NB)")

release: $(READY) ## Regenerate notebooks/ (the student release) from solutions/ with nbgrader
	@test -d solutions || { echo "solutions/ is not part of the student bundle"; exit 1; }
	$(BIN)/python tools/export_helpers.py  # shared modules generated from solution cells (shared/attention.py, ...)
	$(BIN)/python tools/from_scratch_notes.py  # each answer cell's "Not allowed here" line, from its metadata
	cd autograder && for assignment in $(ASSIGNMENTS); do \
		$(BIN)/nbgrader generate_assignment $$assignment --force --log-level=WARN || exit 1; done

references: $(READY) ## Execute the solutions and record their public and hidden references (ASSIGNMENT=NN_name[,...]: only those)
	@test -d solutions || { echo "solutions/ is not part of the student bundle"; exit 1; }
	$(BIN)/python tools/record_references.py $(subst $(comma), ,$(ASSIGNMENT))

grade: $(READY) ## Autograde SUBMISSIONS (default submitted/) in WORKERS processes, or on a Dask cluster (SCHEDULER=tcp://host:8786); FORCE=1 regrades all
	@test -d autograder || { echo "autograder/ is not part of the student bundle"; exit 1; }
	$(BIN)/python autograder/grade.py --submissions "$(SUBMISSIONS)" --output "$(GRADING_OUTPUT)" $(if $(WORKERS),--workers $(WORKERS)) $(if $(filter 1,$(FORCE)),--force) $(if $(SCHEDULER),--scheduler "$(SCHEDULER)")

export: $(READY) ## Write nbgrader's own export of the gradebook make grade wrote to GRADING_OUTPUT/nbgrader_export.csv
	@test -f "$(abspath $(GRADING_OUTPUT))/gradebook.db" || { echo "No gradebook at $(abspath $(GRADING_OUTPUT))/gradebook.db: run make grade first (with the same GRADING_OUTPUT)."; exit 1; }
	cd autograder && SUBMISSIONS="$(abspath $(SUBMISSIONS))" GRADING_OUTPUT="$(abspath $(GRADING_OUTPUT))" $(BIN)/nbgrader export --to "$(abspath $(GRADING_OUTPUT))/nbgrader_export.csv"

report: $(READY) ## Write the course reports (wide table, Canvas CSV, HTML report, manual grading pages) from GRADING_OUTPUT's gradebook
	@test -f "$(abspath $(GRADING_OUTPUT))/gradebook.db" || { echo "No gradebook at $(abspath $(GRADING_OUTPUT))/gradebook.db: run make grade first (with the same GRADING_OUTPUT)."; exit 1; }
	$(BIN)/python autograder/reports.py --output "$(abspath $(GRADING_OUTPUT))" $(if $(FORMGRADER_URL),--formgrader-url "$(FORMGRADER_URL)")

# Jupyter runs in the foreground (Ctrl-C stops it); beside it, a loop prints formgrader's link once the server answers,
# so that the link is the last line of the server's start-up (the token is JUPYTER_TOKEN's, or a new one).
formgrader: $(READY) ## Open nbgrader's formgrader to grade written answers by hand (FORMGRADER_PORT=8888); prints its link last
	@cd autograder || exit 1; \
	export SUBMISSIONS="$(abspath $(SUBMISSIONS))" GRADING_OUTPUT="$(abspath $(GRADING_OUTPUT))" \
		JUPYTER_TOKEN="$${JUPYTER_TOKEN:-$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(24))')}"; \
	url="http://localhost:$(or $(FORMGRADER_PORT),8888)"; server=$$$$; \
	{ until $(BIN)/python -c 'import os, sys, urllib.request as r; r.build_opener(r.ProxyHandler({})).open(r.Request(sys.argv[1] + "/api/status", headers={"Authorization": "token " + os.environ["JUPYTER_TOKEN"]}), timeout=5)' "$$url" 2>/dev/null; do \
		kill -0 $$server 2>/dev/null || exit 0; sleep 0.5; done; echo "Jupyter is serving formgrader (Ctrl-C stops it):"; echo "formgrader: $$url/formgrader?token=$$JUPYTER_TOKEN"; } & \
	exec $(BIN)/jupyter lab --no-browser --log-level=WARN --port=$(or $(FORMGRADER_PORT),8888) --ServerApp.port_retries=0 --LabApp.default_url=/formgrader $(if $(filter 0,$(shell id -u)),--allow-root)

student-bundle: $(READY) ## Build dist/student-bundle(.tar.gz): what students clone (ASSIGNMENTS=NN_name[,...]: only those)
	$(BIN)/python tools/student_bundle.py $(if $(filter command line,$(origin ASSIGNMENTS)),--assignments "$(ASSIGNMENTS)")

# A Dask cluster for make grade SCHEDULER=...: the scheduler and each worker run from this checkout (at the same path on
# every machine) with autograder/ on their Python path; a task that kills two workers is given up (graded 0 with a note).
dask-scheduler: $(READY) ## Start a Dask scheduler for grading on a cluster (DASK_PORT=8786)
	PYTHONPATH="$(CURDIR)/autograder" DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1 \
		exec $(BIN)/dask scheduler --port $(or $(DASK_PORT),8786) --no-dashboard

dask-worker: $(READY) ## Start a one-thread Dask grading worker on this machine (SCHEDULER=tcp://host:8786)
	@test -n "$(SCHEDULER)" || { echo "Name the scheduler: make dask-worker SCHEDULER=tcp://host:8786"; exit 2; }
	PYTHONPATH="$(CURDIR)/autograder" exec $(BIN)/dask worker "$(SCHEDULER)" --nthreads 1 --no-dashboard

gradescope: $(READY) ## Build dist/gradescope/NN_name.zip, a Gradescope autograder for one assignment (ASSIGNMENT=NN_name)
	@test -d autograder || { echo "autograder/ is not part of the student bundle"; exit 1; }
	@test -n "$(ASSIGNMENT)" || { echo "Name the assignment: make gradescope ASSIGNMENT=NN_name (one of: $(ASSIGNMENTS))"; exit 2; }
	$(BIN)/python tools/gradescope.py "$(ASSIGNMENT)"

lock: ## Re-record requirements.lock from the current .venv
	{ echo "# Exact versions of the whole environment, used as constraints by 'make setup' (pip install -c)."; \
	  echo "# Regenerate after changing requirements.txt: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > requirements.lock

clean: ## Remove grading output and build products (keeps .venv, and lms_ids.csv: the instructor's mapping to Canvas)
	rm -rf autograded feedback dist demo reports .grading .exchange gradebook.db grades.csv grades_by_test.csv nbgrader_export.csv
