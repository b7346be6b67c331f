# Every target installs what it needs: a fresh Debian machine with Python 3.11
# is enough. Debian packages come through scripts/debian-packages (apt-get,
# with sudo when not root); Python packages go into .venv.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# openssl: the HTTPS tests' throwaway CA; gcc, libc6-dev: the benchmark's consumer
# (bench/consume.c), which the bench smoke test builds; util-linux and passwd (setpriv,
# unshare, useradd) are in every Debian. dpkg-dev, binutils, lintian: the package test
# builds the .deb (dpkg-shlibdeps, strip) and checks it.
DEBIAN_PACKAGES := ffmpeg prometheus curl systemd systemd-container python3-venv openssl gcc libc6-dev dpkg-dev binutils lintian

# make deb: dpkg-shlibdeps (dpkg-dev), strip (binutils), lintian.
DEB_PACKAGES := dpkg-dev binutils lintian python3-venv

.PHONY: demo dashboards test check lint unit functional integration local-aws-start local-aws-stop bench clean dist deb

$(VENV)/.installed: pyproject.toml
	scripts/bootstrap-venv $(PYTHON) $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

debian-packages:
	scripts/debian-packages $(DEBIAN_PACKAGES)

demo: $(VENV)/.installed debian-packages
	$(PY) scripts/local_aws.py install
	$(PY) scripts/demo.py

# The Grafana dashboard JSON is generated: edit grafana/generate.py, then run this.
dashboards: $(VENV)/.installed
	$(PY) grafana/generate.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy -p s3feed.auth -p s3feed.client -p s3feed.transfer -p s3feed.daemon
	$(VENV)/bin/mypy localaws grafana/generate.py tests/fakes tests/functional/client_examples.py
	$(PY) scripts/check_wheel.py
	$(VENV)/bin/openapi-spec-validator daemon/openapi.yaml
	@# every test module imports under its basename: two of one name break `make test` only
	$(PY) -m pytest --collect-only -q tests > /dev/null

test: $(VENV)/.installed debian-packages lint
	$(PY) scripts/local_aws.py install
	$(PY) -m pytest -q

# The inner loop: lint, unit and functional tests side by side (no local AWS,
# no Debian packages; a minute or so). `make test` is what CI runs.
check: $(VENV)/.installed
	$(MAKE) --no-print-directory --output-sync=target -j3 lint unit functional

unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

functional: $(VENV)/.installed
	$(PY) -m pytest -q tests/functional

integration: $(VENV)/.installed debian-packages
	$(PY) scripts/local_aws.py install
	$(PY) -m pytest -q tests/integration

# Side-by-side benchmark against rclone, s5cmd, awscrt, boto3 and curl on a
# local SeaweedFS; writes bench/RESULTS.md. make bench BENCH_ARGS="--size 1GiB"
bench: $(VENV)/.installed debian-packages
	$(PY) -m bench.run $(BENCH_ARGS)

# The wheel and the sdist, in dist/.
dist: $(VENV)/.installed
	rm -f dist/s3feed-*.whl dist/s3feed-*.tar.gz
	$(PY) -m build --outdir dist .

# The Debian package, in dist/ (README.md, Install): s3feed in a virtualenv under
# /usr/lib/s3feed, from the wheel above; lintian must report no error or warning.
deb: dist
	scripts/debian-packages $(DEB_PACKAGES)
	rm -f dist/s3feed_*.deb
	$(PY) scripts/build_deb.py --wheel dist/s3feed-*-py3-none-any.whl --out dist
	lintian --fail-on error,warning dist/s3feed_*.deb

clean:
	-$(PY) scripts/local_aws.py stop
	rm -rf $(VENV) .local-aws .pytest_cache .mypy_cache .ruff_cache
