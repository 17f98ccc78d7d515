# Two commands on a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := slurm-wlm munge e2fsprogs xfsprogs btrfs-progs util-linux nfs-kernel-server iproute2

.PHONY: install system-deps test demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The real Slurm the tests, the benchmarks and the demo run against (Debian packages).
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: install system-deps
	$(BIN)/pytest -q

demo: install system-deps
	$(BIN)/cfncluster-node demo

bench: install system-deps
	$(BIN)/python -m tests.bench
	$(BIN)/python -m tests.bench_fleet

lint: install
	$(BIN)/ruff check cfncluster_node tests
	$(BIN)/ruff format --check cfncluster_node tests
	$(BIN)/mypy cfncluster_node

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
