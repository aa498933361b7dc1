#!/usr/bin/env bash
# The whole test suite: Rust unit/property tests, then the Python suite.
# Usage: bash tools/test.sh [extra pytest arguments]
source "$(dirname "$0")/env.sh"
echo "==> cargo test (release)" >&2
cargo test --release --quiet
echo "==> pytest" >&2
python -m pytest "$@"
