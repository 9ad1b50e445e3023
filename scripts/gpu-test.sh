#!/usr/bin/env bash
# GPU tests of the CUDA backend (tests/gpu_kernels.rs, tests/gpu_e2e.rs) through the device tool.
# The GPU machine has CUDA 13 but no Rust, and a device call carries at most 64 MiB, so:
#
# 1. Here (the build machine):
#      scripts/gpu-test.sh pack [--models "tiny.en base"] [--ljspeech] [--cpu-cache DIR]
#    builds the two test binaries (cargo test --release --no-run), strips and compresses them, and
#    spreads them, the chosen models (none by default) and the shared test data they need over
#    .dev/gpu/load-1, load-2, ... (git-ignored), each small enough for one call; files too big
#    for one call are split and joined again there. It prints the device calls to make.
# 2. There, one device call per load, back to back so the machine stays warm (it keeps /tmp
#    only while held):
#      scripts/gpu-test.sh stage .dev/gpu/load-1          # carry: [".dev/gpu/load-1"]; every load but the last
#      scripts/gpu-test.sh run .dev/gpu/load-N [SUITE...]  # carry: [".dev/gpu/load-N"]: stages it, joins, runs
#    SUITE: kernels, synthetic, synthetic-nograph (decode steps launch by launch, no CUDA graphs),
#    tiny.en, tiny.en-beam5, base, speed, gemv-speed, quant (the int8 kernels and synthetic int8
#    models against the CPU), quant-tiny.en, quant-base (int8 engine WER against fp16), kv8 (the int8 KV cache of synthetic
#    models against the CPU; also in quant), kv8-tiny.en, kv8-base (int8 KV WER against fp16), batch (batched transcription and on-GPU
#    selection; needs tiny.en packed, LJSpeech too for all 248 clips) (default: kernels synthetic,
#    plus the greedy suite of every model packed). The log goes to $OUT/gpu-test.log too.
#
# WHISPER_TRT_BUILD_DIR: where pack runs cargo (default: this checkout).
# Environment there: LD_LIBRARY_PATH gets /usr/local/cuda/lib64 (cuBLASLt, NVRTC); the tests
# compile the kernels with that NVRTC (the test-only CudaModel::from_model_dir path). The CPU
# backend's transcripts are cached in $STAGE/cpu-cache (or come packed with --cpu-cache).
set -euo pipefail

die() { echo "gpu-test.sh: error: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/loads.sh
source "$repo/scripts/lib/loads.sh"
STAGE=${WHISPER_TRT_GPU_STAGE:-/tmp/whisper-trt-gpu}
# Under the 64 MiB a call carries, with room for the working tree (under 1 MiB).
LOAD_BYTES=${WHISPER_TRT_GPU_LOAD_BYTES:-$((62 * 1024 * 1024))}
# Where pack writes its loads (helpers packing at once each use their own).
PACK_DIR=${WHISPER_TRT_GPU_PACK_DIR:-$repo/.dev/gpu}

pack() {
    local models="" ljspeech=0 cpu_cache=""
    while [[ $# -gt 0 ]]; do
        case $1 in
            --models) models=$2; shift 2 ;;
            --ljspeech) ljspeech=1; shift ;;
            --cpu-cache) cpu_cache=$2; shift 2 ;;
            *) die "pack: unknown argument $1" ;;
        esac
    done
    local shared=${WHISPER_TRT_SHARED:-$repo/../shared}
    local models_dir=${WHISPER_TRT_MODELS:-$repo/models}
    [[ -d $shared/data ]] || die "shared data not found at $shared"
    command -v xz >/dev/null || die "xz is needed"
    command -v python3 >/dev/null || die "python3 is needed"

    echo "gpu-test.sh: building the test binaries" >&2
    local json
    json=$(cd "${WHISPER_TRT_BUILD_DIR:-$repo}" && cargo test --release --no-run --test gpu_kernels --test gpu_e2e --test gpu_quant --message-format=json) \
        || die "cargo test --no-run failed"
    local tree=$PACK_DIR/tree
    rm -rf "$PACK_DIR"
    mkdir -p "$tree/bin"
    # The executables cargo reports for the two test targets.
    echo "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("gpu_kernels", "gpu_e2e", "gpu_quant"):
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
        strip -o "$tree/bin/$name" "$exe"
        xz -9 -T0 "$tree/bin/$name"
    done
    [[ -f $tree/bin/gpu_kernels.xz && -f $tree/bin/gpu_e2e.xz && -f $tree/bin/gpu_quant.xz ]] || die "test binaries not found in cargo's output"
    # The binary itself, for the cli suite (build, transcribe and eval as a user runs them).
    (cd "${WHISPER_TRT_BUILD_DIR:-$repo}" && cargo build --release) || die "cargo build --release failed"
    strip -o "$tree/bin/whisper-trt" "${WHISPER_TRT_BUILD_DIR:-$repo}/target/release/whisper-trt"
    xz -9 -T0 "$tree/bin/whisper-trt"

    # Shared test data (as ../shared lays it out).
    local d=$tree/shared/data
    mkdir -p "$d/whisper" "$d/reference/mel"
    cp "$shared/data/whisper/jfk.flac" "$shared/data/whisper/english.json" "$d/whisper/"
    cp "$shared/data/reference/mel/librispeech_1089-134686-0000.mel80.f32" "$d/reference/mel/"
    cp -r "$shared/data/librispeech" "$d/"
    rm -rf "$d/librispeech/transcripts"
    [[ $ljspeech == 1 ]] && cp -r "$shared/data/ljspeech" "$d/"
    for m in $models; do
        mkdir -p "$d/reference/$m" "$tree/models/$m"
        cp "$shared/data/reference/$m/"*.jsonl "$d/reference/$m/"
        [[ -f $models_dir/$m/model.safetensors ]] || die "$models_dir/$m is missing: run scripts/fetch-model.sh $m"
        cp "$models_dir/$m/config.json" "$models_dir/$m/tokenizer.json" "$models_dir/$m/model.safetensors" "$tree/models/$m/"
    done
    if [[ -n $cpu_cache ]]; then
        mkdir -p "$tree/cpu-cache"
        cp "$cpu_cache"/*.jsonl "$tree/cpu-cache/"
    fi
    echo "$models" >"$tree/models.txt"
    [[ $ljspeech == 1 ]] && touch "$tree/ljspeech"

    loads_split "$tree" "$PACK_DIR" "$LOAD_BYTES"
    loads_calls "$PACK_DIR" scripts/gpu-test.sh "[SUITE...]"
}

stage() {
    loads_stage "${1:-}" "$STAGE"
}

run() {
    local load=${1:?run: which load?}
    shift
    stage "$load"
    loads_join "$STAGE"
    cd "$STAGE"

    export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export WHISPER_TRT_SHARED=$STAGE/shared WHISPER_TRT_MODELS=$STAGE/models WHISPER_TRT_CPU_CACHE=$STAGE/cpu-cache
    local subsets="test-clean,test-other,smoke"
    [[ -f ljspeech ]] && subsets="$subsets,ljspeech"
    export WHISPER_TRT_GPU_SUBSETS=${WHISPER_TRT_GPU_SUBSETS:-$subsets}
    local suites=("$@")
    if [[ ${#suites[@]} == 0 ]]; then
        suites=(kernels synthetic)
        for m in $(cat models.txt); do suites+=("$m"); done
    fi
    local log=${OUT:-$STAGE}/gpu-test.log
    mkdir -p "$(dirname "$log")"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log" || true
    local failed=()
    # Decode steps run as CUDA graphs unless the synthetic suite failed with them: then the
    # later suites run launch by launch (and the log says so).
    local graphs_ok=1
    for s in "${suites[@]}"; do
        local bin filter
        case $s in
            kernels) bin=gpu_kernels filter="" ;;
            synthetic) bin=gpu_e2e filter=synthetic_weights_match_cpu ;;
            synthetic-nograph) bin=gpu_e2e filter=synthetic_weights_match_cpu ;;
            tiny.en) bin=gpu_e2e filter=tiny_en_greedy_matches_cpu ;;
            tiny.en-beam5) bin=gpu_e2e filter=tiny_en_beam5_matches_cpu ;;
            base) bin=gpu_e2e filter=base_greedy_matches_cpu ;;
            speed) bin=gpu_e2e filter=synthetic_speed ;;
            batch) bin=gpu_e2e filter=batch_gpu:: ;;
            fused) bin=gpu_e2e filter=fused_step ;;
            gemv-speed) bin=gpu_kernels filter=gemv_speed ;;
            quant) bin=gpu_quant filter=matches_cpu ;;
            quant-tiny.en) bin=gpu_quant filter=tiny_en_int8_wer ;;
            quant-base) bin=gpu_quant filter=base_int8_wer ;;
            kv8) bin=gpu_quant filter=synthetic_int8_kv_matches_cpu ;;
            kv8-tiny.en) bin=gpu_quant filter=tiny_en_kv8_wer ;;
            kv8-base) bin=gpu_quant filter=base_kv8_wer ;;
            cli)
                echo "=== cli" | tee -a "$log"
                if ! cli_suite 2>&1 | tee -a "$log"; then failed+=(cli); fi
                continue ;;
            *) die "unknown suite $s" ;;
        esac
        echo "=== $s" | tee -a "$log"
        # --ignored: the GPU tests are #[ignore]d so that `cargo test` elsewhere skips them.
        local graphs=$graphs_ok
        [[ $s == *-nograph ]] && graphs=0
        if ! WHISPER_TRT_CUDA_GRAPHS=$graphs "bin/$bin" --ignored --nocapture --test-threads=1 $filter 2>&1 | tee -a "$log"; then
            failed+=("$s")
            if [[ $s == synthetic && $graphs_ok == 1 ]]; then
                graphs_ok=0
                echo "gpu-test.sh: synthetic failed with CUDA graphs: later suites run with WHISPER_TRT_CUDA_GRAPHS=0" | tee -a "$log"
            fi
        fi
    done
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "gpu-test.sh: FAILED: ${failed[*]}" | tee -a "$log"
        exit 1
    fi
    echo "gpu-test.sh: all passed: ${suites[*]}" | tee -a "$log"
}

# The command line as a user runs it, per packed model: build the engine, transcribe jfk.flac with
# the default device (must pick the GPU engine by itself), then eval on LibriSpeech on the GPU and
# on the CPU for comparison.
cli_suite() {
    # errexit does not hold inside an `if`, so every step checks its own status.
    local wt=$STAGE/bin/whisper-trt jfk=$STAGE/shared/data/whisper/jfk.flac
    local spelling=$STAGE/shared/data/whisper/english.json ls=$STAGE/shared/data/librispeech/LibriSpeech
    for m in $(cat "$STAGE/models.txt"); do
        local dir=$STAGE/models/$m
        echo "--- $m: build"
        timed "build" "$wt" build --model "$dir" || return 1
        echo "--- $m: transcribe jfk.flac (device auto)"
        "$wt" transcribe "$jfk" --model "$dir" 2>"$STAGE/cli-stderr" >"$STAGE/cli-stdout" || { cat "$STAGE/cli-stderr"; return 1; }
        cat "$STAGE/cli-stdout"
        if grep -q "note:" "$STAGE/cli-stderr"; then cat "$STAGE/cli-stderr"; echo "auto did not pick the GPU"; return 1; fi
        grep -q "ask not what your country can do for you" "$STAGE/cli-stdout" || { echo "wrong jfk text"; return 1; }
        for dev in cuda cpu; do
            echo "--- $m: eval LibriSpeech ($dev)"
            "$wt" eval --librispeech "$ls" --model "$dir" --device "$dev" --language en --spelling "$spelling" || return 1
        done
        if [[ -d $STAGE/shared/data/ljspeech ]]; then
            echo "--- $m: transcribe the LJSpeech clips (cuda, one process)"
            timed "ljspeech transcribe" "$wt" transcribe "$STAGE"/shared/data/ljspeech/wavs/*.flac --model "$dir" --device cuda >/dev/null || return 1
        fi
    done
}

case ${1:-} in
    pack) shift; pack "$@" ;;
    stage) shift; stage "$@" ;;
    run) shift; run "$@" ;;
    *) die "usage: scripts/gpu-test.sh pack [--models \"tiny.en base\"] [--ljspeech] [--cpu-cache DIR] | stage LOAD | run LOAD [SUITE...]" ;;
esac
