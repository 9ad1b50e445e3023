#!/usr/bin/env bash
# Everything CI runs: build, fetch the models the tests use, run every test in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
scripts/fetch-model.sh tiny.en
scripts/fetch-model.sh base
# NVRTC 13.0.88 from pinned wheels (no CUDA toolkit needed): tests/kernels_compile.rs compiles
# every kernel for sm_80, sm_86, sm_89 and sm_90 with it.
nvrtc_env=$(scripts/ci-nvrtc.sh --env)  # a failed install stops here (set -e)
eval "$nvrtc_env"
cargo test --release -- --test-threads=1
