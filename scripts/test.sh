#!/usr/bin/env bash
# Everything CI runs: build, fetch the models the tests use, run every test in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
scripts/fetch-model.sh tiny.en
scripts/fetch-model.sh base
cargo test --release -- --test-threads=1
