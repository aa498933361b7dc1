# Sourced by tools/demo.sh and tools/test.sh: make sure .venv exists, holds the
# package's dependencies, and has the Rust extension built in release mode.
# Safe to run repeatedly; cargo rebuilds only what changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "==> creating virtual environment .venv" >&2
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q "maturin>=1.10,<2"   # no network when already satisfied
# The linters of .ci/run (configured in pyproject.toml), pinned so that their verdict does not drift.
LINTERS=("ruff==0.17.6" "mypy==2.4.1" "types-PyYAML==6.0.12.20261122" "types-requests==2.33.0.20261030")
if [ "$(python -m ruff --version 2>/dev/null)" != "ruff 0.17.6" ] \
    || ! python -c "import sys, mypy.version as v; sys.exit(v.__version__ != '2.4.1')" 2>/dev/null; then
    python -m pip install -q "${LINTERS[@]}"
fi
# The extension is built for the stable ABI (_core.abi3.so). A per-version _core.cpython-*.so left
# by an older build would be imported first (its suffix ranks higher), so remove it.
rm -f python/spxquery/drizzle3d/_core.cpython-*.so
echo "==> building the Rust extension (release) and installing spxquery-drizzle3d" >&2
python -m maturin develop --release --extras test -q 2>&1 | grep -vE '^(📦|🔗|🐍|💻|🛠|✏️|📖|🍹|⚠️  Warning: .*pip)' >&2 || true
python -c "import spxquery.drizzle3d._core" || { echo "error: the Rust extension did not build; see the messages above" >&2; exit 1; }
