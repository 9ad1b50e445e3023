#!/usr/bin/env bash
# Fresh machine to first transcript: build, fetch the models this workplace can get, transcribe jfk.flac.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "setup: cargo is missing; install Rust from https://rustup.rs" >&2; exit 1; }
cargo build --release
scripts/fetch-model.sh tiny.en
scripts/fetch-model.sh base
target/release/whisper-trt transcribe "${SHARED:-../shared}/data/whisper/jfk.flac"
