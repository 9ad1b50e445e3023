#!/usr/bin/env bash
# whisper-trt and PyTorch (transformers, scripts/reference_pytorch.py) side by side on the GPU
# machine: both transcribe the shared LibriSpeech (and LJSpeech) clips with the same model, each
# writes results.jsonl and summary.json, and `whisper-trt eval --compare` prints one table of WER,
# wall time and peak GPU memory, and the utterances whose hypotheses differ.
#
# The GPU machine has CUDA, PyTorch and transformers but no Rust and no network, and a device call
# carries at most 64 MiB, so:
#
# 1. Here (network to PyPI, Rust):
#      scripts/eval-gpu.sh pack [--models "tiny.en base"] [--no-ljspeech]
#    builds the release binary (stripped, xz), downloads from PyPI the wheels the PyTorch side lacks
#    there (soundfile, cffi, pycparser, more-itertools, for Python 3.12) and openai-whisper's sdist
#    (its normalizers folder becomes the package whisper_normalizers), and spreads them, the models
#    (default: tiny.en) and the shared data over $WHISPER_TRT_GPU_PACK_DIR/load-1, load-2, ...
#    (default .dev/gpu-eval, git-ignored), each small enough for one call. It prints the calls.
# 2. There, one device call per load, back to back so the machine stays warm (it keeps /tmp only
#    while held):
#      scripts/eval-gpu.sh stage .dev/gpu-eval/load-1      # carry: [".dev/gpu-eval/load-1"]; every load but the last
#      scripts/eval-gpu.sh run .dev/gpu-eval/load-N [--beam-size N] [--batch N]
#                                                         # carry: [".dev/gpu-eval/load-N"]
#    run stages the last load, checks every file, then per model, from a clean state: builds the
#    engine (fp16, --max-batch N, beam width 1 for greedy), runs `whisper-trt eval` on it, runs
#    scripts/reference_pytorch.py (fp16, SDPA, --batch-size N), and prints the comparison.
#    $OUT gets eval-gpu.log (everything printed) and eval-gpu-results.tar.gz (both systems'
#    results.jsonl and summary.json per model).
#
# WHISPER_TRT_GPU_STAGE: where the loads are staged there (default /tmp/whisper-trt-eval).
set -euo pipefail

die() { echo "eval-gpu.sh: error: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/loads.sh
source "$repo/scripts/lib/loads.sh"
STAGE=${WHISPER_TRT_GPU_STAGE:-/tmp/whisper-trt-eval}
LOAD_BYTES=${WHISPER_TRT_GPU_LOAD_BYTES:-$((62 * 1024 * 1024))}
PACK_DIR=${WHISPER_TRT_GPU_PACK_DIR:-$repo/.dev/gpu-eval}
# What the PyTorch side needs beyond the GPU machine's image (pinned; Python 3.12 there).
WHEELS="soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 more-itertools==11.2.1"
OPENAI_WHISPER=openai-whisper==20250625

pack() {
    local models="tiny.en" ljspeech=1
    while [[ $# -gt 0 ]]; do
        case $1 in
            --models) models=$2; shift 2 ;;
            --no-ljspeech) ljspeech=0; shift ;;
            *) die "pack: unknown argument $1" ;;
        esac
    done
    local shared=${WHISPER_TRT_SHARED:-$repo/../shared}
    local models_dir=${WHISPER_TRT_MODELS:-$repo/models}
    [[ -d $shared/data ]] || die "shared data not found at $shared"
    command -v xz >/dev/null || die "xz is needed"
    local tree=$PACK_DIR/tree
    rm -rf "$PACK_DIR"
    mkdir -p "$tree/bin" "$tree/whl" "$tree/py" "$tree/data/whisper"

    echo "eval-gpu.sh: building the binary" >&2
    (cd "$repo" && cargo build --release) || die "cargo build --release failed"
    strip -o "$tree/bin/whisper-trt" "$repo/target/release/whisper-trt"
    xz -9 -T0 "$tree/bin/whisper-trt"

    echo "eval-gpu.sh: fetching the PyTorch side's packages from PyPI" >&2
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$tree/whl" $WHEELS || die "pip download of $WHEELS failed"
    local sdist=$PACK_DIR/sdist
    mkdir -p "$sdist"
    python3 -m pip download -q --no-deps --no-binary :all: -d "$sdist" "$OPENAI_WHISPER" || die "pip download $OPENAI_WHISPER failed"
    tar -xzf "$sdist"/openai_whisper-*.tar.gz -C "$sdist"
    cp -r "$sdist"/openai_whisper-*/whisper/normalizers "$tree/py/whisper_normalizers"
    rm -rf "$sdist"
    [[ -f $tree/py/whisper_normalizers/english.json ]] || die "no normalizers in the openai-whisper sdist"

    # The data, laid out so that one eval root holds every set: LibriSpeech's subsets and ljspeech.
    cp -r "$shared/data/librispeech/LibriSpeech" "$tree/data/"
    [[ $ljspeech == 1 ]] && cp -r "$shared/data/ljspeech" "$tree/data/"
    cp "$shared/data/whisper/english.json" "$shared/data/whisper/mel_filters.npz" "$tree/data/whisper/"
    for m in $models; do
        [[ -f $models_dir/$m/model.safetensors ]] || die "$models_dir/$m is missing: run scripts/fetch-model.sh $m"
        mkdir -p "$tree/models/$m"
        cp "$models_dir/$m/config.json" "$models_dir/$m/tokenizer.json" "$models_dir/$m/model.safetensors" "$tree/models/$m/"
    done
    echo "$models" >"$tree/models.txt"

    loads_split "$tree" "$PACK_DIR" "$LOAD_BYTES"
    loads_calls "$PACK_DIR" scripts/eval-gpu.sh "[--beam-size N] [--batch N]"
}

stage() {
    loads_stage "${1:-}" "$STAGE"
}

run() {
    local load=${1:?run: which load?}
    shift
    local beam="" batch=16
    while [[ $# -gt 0 ]]; do
        case $1 in
            --beam-size) beam=$2; shift 2 ;;
            --batch) batch=$2; shift 2 ;;
            *) die "run: unknown argument $1" ;;
        esac
    done
    local log=${OUT:-$STAGE}/eval-gpu.log
    mkdir -p "$(dirname "$log")"
    stage "$load" | tee -a "$log"
    run_staged "$beam" "$batch" 2>&1 | tee -a "$log"
    return "${PIPESTATUS[0]}"
}

run_staged() {
    local beam=$1 batch=$2
    loads_join "$STAGE"
    cd "$STAGE"
    export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    rm -rf site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$STAGE/site" whl/*.whl \
        || die "pip install of the carried wheels failed"
    export PYTHONPATH=$STAGE/site:$STAGE/py${PYTHONPATH:+:$PYTHONPATH}
    export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader || true
    python3 -c 'import torch, transformers, soundfile; print("torch", torch.__version__, "transformers", transformers.__version__, "soundfile", soundfile.__version__, "libsndfile", soundfile.__libsndfile_version__)'

    local wt=$STAGE/bin/whisper-trt data=$STAGE/data res=$STAGE/results
    local beam_args=() width=1 mode=greedy
    if [[ -n $beam ]]; then beam_args=(--beam-size "$beam"); width=$beam; mode=beam$beam; fi
    rm -rf "$res"
    mkdir -p "$res"
    local failed=()
    for m in $(cat models.txt); do
        local dir=$STAGE/models/$m engine=$STAGE/$m.engine ours=$res/whisper-trt-$m-$mode theirs=$res/pytorch-$m-$mode
        rm -f "$engine"
        echo "=== $m $mode: whisper-trt build"
        if ! timed "build" "$wt" build --model "$dir" --output "$engine" --max-batch "$batch" --beam-width "$width"; then
            failed+=("$m build"); continue
        fi
        echo "=== $m $mode: whisper-trt eval"
        "$wt" eval --librispeech "$data" --model "$dir" --engine "$engine" --device cuda --language en \
            --spelling "$data/whisper/english.json" --max-batch "$batch" --output "$ours" "${beam_args[@]}" \
            || failed+=("$m whisper-trt eval")
        echo "=== $m $mode: PyTorch (scripts/reference_pytorch.py)"
        python3 "$repo/scripts/reference_pytorch.py" --model "$dir" --librispeech "$data" --output "$theirs" \
            --normalizers "$STAGE/py" --mel-filters "$data/whisper/mel_filters.npz" --batch-size "$batch" \
            --language en "${beam_args[@]}" || failed+=("$m pytorch")
        if [[ -f $ours/results.jsonl && -f $theirs/results.jsonl ]]; then
            echo "=== $m $mode: side by side"
            "$wt" eval --output "$ours" --compare "$theirs/results.jsonl" || failed+=("$m compare")
        fi
    done
    if [[ -n ${OUT:-} ]]; then
        tar -czf "$OUT/eval-gpu-results.tar.gz" -C "$res" .
    fi
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "eval-gpu.sh: FAILED: ${failed[*]}"
        return 1
    fi
    echo "eval-gpu.sh: done"
}

case ${1:-} in
    pack) shift; pack "$@" ;;
    stage) shift; stage "$@" ;;
    run) shift; run "$@" ;;
    *) die "usage: scripts/eval-gpu.sh pack [--models \"tiny.en base\"] [--no-ljspeech] | stage LOAD | run LOAD [--beam-size N] [--batch N]" ;;
esac
