#!/usr/bin/env bash
# The test suite under PyPy (the cffi backend, chosen automatically there).
# Run from the repository root as root on Debian/Ubuntu (CI=true): installs
# Debian's pypy3 and pypy3-dev, builds the package into .venv-pypy, runs the
# suite.  Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== pypy3 (apt)"
if ! command -v pypy3 >/dev/null || ! [ -e "$(pypy3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq pypy3 pypy3-dev
fi
pypy3 --version

echo "== venv + install (PyPy)"
rm -rf .venv-pypy
pypy3 -m venv .venv-pypy
if ! .venv-pypy/bin/python -m pip install --upgrade pip; then
    echo "warning: could not upgrade pip; going on with $(.venv-pypy/bin/pip --version)"
fi
# numpy is left out of the test extra on PyPy (its tests skip themselves)
.venv-pypy/bin/pip install '.[test]'
.venv-pypy/bin/python -c 'import ackring, psutil; print("ackring", ackring.__version__, "backend", ackring.backend, "psutil", psutil.__version__)'

echo "== tests (PyPy, cffi backend)"
start=$(date +%s)
.venv-pypy/bin/python -m pytest "$@"
echo "pypy suite took $(( $(date +%s) - start )) s"
