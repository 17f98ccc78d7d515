# Two commands on a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := slurm-wlm munge gridengine-master gridengine-client gridengine-exec \
	e2fsprogs xfsprogs btrfs-progs util-linux nfs-kernel-server iproute2 iptables packer
VM_PACKAGES := qemu-system-x86 qemu-utils mmdebstrap zstd

.PHONY: install system-deps vm-deps test test-fast vmtest dist demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Debian packages: the real Slurm, filesystem and NFS tools, packer, and for the VM test QEMU.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

# gridengine's postinst builds a cell from these answers; the tests' qmaster has its own.
system-deps:
	@for p in gridengine-common gridengine-client gridengine-master; do \
		printf '%s shared/gridenginemaster string %s\n%s shared/gridenginecell string default\n%s shared/gridengineconfig boolean true\n' \
			$$p "$$(hostname)" $$p $$p; \
	done | debconf-set-selections
	$(call apt_install,$(SYSTEM_PACKAGES))

vm-deps:
	$(call apt_install,$(VM_PACKAGES))

# Lint, the suite, then the full-system boot test: CI runs exactly this.
test: lint system-deps
	$(BIN)/pytest -q
	$(MAKE) vmtest

# The pure core alone, in seconds: no root, no daemons, nothing to install but the venv.
test-fast: install
	$(BIN)/pytest -q -m pure

# What Packer bakes into the AMIs: the project's wheel and every dependency's, the units
# and the install script.
dist: install
	# A stale build/ would carry modules since removed or excluded (the playground).
	rm -rf build dist
	$(BIN)/pip wheel --quiet --wheel-dir dist/wheels .
	cp -r systemd packer/install.sh dist/

# Debian under QEMU with systemd as PID 1: tests/vm/vmtest.sh (results in .vmtest/).
vmtest: vm-deps dist
	tests/vm/vmtest.sh

demo: install system-deps
	$(BIN)/cfncluster-node demo

bench: install system-deps
	$(BIN)/python -m bench.watcher
	$(BIN)/python -m bench.fleet

lint: install
	$(BIN)/ruff check cfncluster_node tests bench
	$(BIN)/ruff format --check cfncluster_node tests bench
	$(BIN)/mypy cfncluster_node

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis dist .vmtest
