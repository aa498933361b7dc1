#!/usr/bin/env bash
# Offline demo: builds the package if needed (creates .venv, Rust extension in release mode),
# then simulates a small SPHEREx field, serves it on 127.0.0.1, drizzles it and writes the
# cube and quick-look PNGs to ./spxdrizzle_demo/.  No network access beyond 127.0.0.1
# (except creating .venv the first time, which installs the dependencies with pip).
# Usage: bash tools/demo.sh [extra 'spxdrizzle demo' options, e.g. --n-pointings 8 --keep]
source "$(dirname "$0")/env.sh"
echo "==> spxdrizzle demo --output-dir spxdrizzle_demo $*" >&2
python -m spxquery.drizzle3d demo --output-dir spxdrizzle_demo "$@"
