#!/usr/bin/env bash
# whisper-trt against PyTorch (HF transformers, scripts/bench_pytorch.py) on the GPU machine, in one
# device call: `whisper-trt bench` and bench_pytorch.py with the same shapes, batch sizes and
# test-clean-shaped workload, then both side by side with the ratios.
#
# The GPU machine has CUDA, PyTorch and transformers but no Rust, and a call carries at most 64 MiB:
#
# 1. Here:
#      scripts/bench-gpu.sh pack
#    builds the release binary and puts it (stripped, xz), LibriSpeech's test-clean transcripts and
#    the tiny.en tokenizer.json (the English tokenizer that counts the workload's tokens) into
#    $WHISPER_TRT_GPU_PACK_DIR (default .dev/gpu-bench, git-ignored; about 6 MiB).
# 2. There, one call (carry: [".dev/gpu-bench"]):
#      scripts/bench-gpu.sh run [--sizes "large-v2 tiny"] [--batch 1,8,32] [--batch1-sample N]
#                               [--no-pytorch] [--no-workload] [--steps N]
#                               [--variants "fp16 w8 kv8 w8kv8"]
#    (variants: engines with int8 weights (w8), the int8 KV cache calibrated on the 8 packed
#    LibriSpeech clips (kv8), or both; default fp16 only; the PyTorch comparison uses fp16's)
#    per size: `whisper-trt bench --synthetic SIZE --batch ... --json $OUT/ours-SIZE.json`, then
#    `python3 scripts/bench_pytorch.py --size SIZE ... --json $OUT/pytorch-SIZE.json`, then the
#    comparison (also `scripts/bench-gpu.sh compare OURS.json PYTORCH.json` anywhere). $OUT gets
#    bench-gpu.log with everything printed. large-v2 and tiny together take about 8 minutes on an
#    H100 (PyTorch's batch-1 workload is timed on every Nth utterance: --batch1-sample, default 20).
set -euo pipefail

die() { echo "bench-gpu.sh: error: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACK_DIR=${WHISPER_TRT_GPU_PACK_DIR:-$repo/.dev/gpu-bench}
STAGE=${WHISPER_TRT_GPU_STAGE:-/tmp/whisper-trt-bench}

pack() {
    local shared=${WHISPER_TRT_SHARED:-$repo/../shared}
    local models_dir=${WHISPER_TRT_MODELS:-$repo/models}
    local transcripts=$shared/data/librispeech/transcripts/test-clean.trans.txt
    local tokenizer=$models_dir/tiny.en/tokenizer.json
    [[ -f $transcripts ]] || die "$transcripts not found (set WHISPER_TRT_SHARED)"
    [[ -f $tokenizer ]] || die "$tokenizer not found: run scripts/fetch-model.sh tiny.en"
    command -v xz >/dev/null || die "xz is needed"
    (cd "$repo" && cargo build --release) || die "cargo build --release failed"
    rm -rf "$PACK_DIR"
    mkdir -p "$PACK_DIR"
    strip -o "$PACK_DIR/whisper-trt" "$repo/target/release/whisper-trt"
    xz -9 -T0 "$PACK_DIR/whisper-trt"
    cp "$transcripts" "$PACK_DIR/test-clean.trans.txt"
    cp "$tokenizer" "$PACK_DIR/tokenizer.json"
    # Calibration audio for --int8-kv engines (the first 8 shared LibriSpeech clips).
    mkdir -p "$PACK_DIR/calib"
    find "$shared/data/librispeech" -name '*.flac' | sort | head -8 | xargs -I{} cp {} "$PACK_DIR/calib/"
    local size
    size=$(du -sm "$PACK_DIR" | cut -f1)
    ((size < 60)) || die "$PACK_DIR is $size MiB, over one call's load"
    echo "bench-gpu.sh: packed $PACK_DIR (${size} MiB). Device call:"
    echo "  run carry=[\"${PACK_DIR#"$repo"/}\"]: scripts/bench-gpu.sh run ${PACK_DIR#"$repo"/}"
}

compare() {
    python3 - "$@" <<'EOF'
import json, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
if f"synthetic {theirs.get('size')} " not in ours.get("source", "") + " ":
    print(f"bench-gpu.sh: warning: whisper-trt measured {ours.get('source')}, PyTorch {theirs.get('size')}: not the same model", file=sys.stderr)
print(f"\n{ours['source']} on {ours['gpu']} ({ours['driver']}), {ours['date']}: whisper-trt vs PyTorch "
      f"{theirs.get('versions', {}).get('torch', '?')} / transformers {theirs.get('versions', {}).get('transformers', '?')} (fp16, SDPA)")
rows = []
def row(name, a, b, unit, higher_better=False):
    if a is None or b is None:
        rows.append((name, "n/a" if a is None else f"{a:.4g}", "n/a" if b is None else f"{b:.4g}", "", unit)); return
    ratio = (a / b) if higher_better else (b / a)
    rows.append((name, f"{a:.4g}", f"{b:.4g}", f"{ratio:.2f}x", unit))
oc, tc = ours["ceilings"], theirs["ceilings"]
row("copy bandwidth (read+written)", oc["copy_gb_s"], tc["copy_gb_s"], "GB/s", True)
row("fp16 8192^3 GEMM", oc["gemm_tflop_s"], tc["matmul_tflop_s"], "TFLOP/s", True)
tenc, tdec = theirs["encoder_ms_per_window"], theirs["decoder_step_ms"]
for e in ours["encoder"]:
    b = str(e["batch"])
    row(f"encoder, batch {b}", e["encoder_ms_per_window"], tenc.get(b), "ms/window")
    row(f"encoder + cross K/V, batch {b}", e["total_ms_per_window"], tenc.get(b), "ms/window (PyTorch: encoder only)")
for d in ours["decoder"]:
    b = str(d["batch"])
    row(f"decoder step at 50, batch {b}", d["step_ms_graphs"], tdec.get(b), "ms")
ow, tw = ours.get("workload"), theirs.get("workload")
if ow and tw:
    wb = tw["workload_batch"]
    row(f"workload wall, max batch {ow['max_batch']} vs PyTorch batch {wb}", ow["wall_s"], tw[f"batch_{wb}_s"], "s")
    row("workload wall vs PyTorch batch 1 (estimated)", ow["wall_s"], tw["batch_1_estimated_s"], "s")
    row("workload RTF (5.4 h)", ow["rtf"], tw[f"batch_{wb}_rtf"], "")
    row("workload peak GPU memory", ow["peak_gpu_bytes"] / 2**30, tw["peak_memory_bytes"] / 2**30, "GiB (ours: whole device in use; PyTorch: max allocated)")
w = [max(len(r[i]) for r in rows + [("figure", "whisper-trt", "PyTorch", "speedup", "")]) for i in range(5)]
print(f"{'figure':<{w[0]}} | {'whisper-trt':>{w[1]}} | {'PyTorch':>{w[2]}} | {'speedup':>{w[3]}} | unit")
print("-" * (sum(w) + 16))
for r in rows:
    print(f"{r[0]:<{w[0]}} | {r[1]:>{w[1]}} | {r[2]:>{w[2]}} | {r[3]:>{w[3]}} | {r[4]}")
EOF
}

run() {
    local load=${1:?run: which folder? (.dev/gpu-bench)}
    shift
    local sizes="large-v2 tiny" batch=1,8,32 sample=20 pytorch=1 workload=1 steps=50 variants=fp16
    while [[ $# -gt 0 ]]; do
        case $1 in
            --sizes) sizes=$2; shift 2 ;;
            --batch) batch=$2; shift 2 ;;
            --batch1-sample) sample=$2; shift 2 ;;
            --steps) steps=$2; shift 2 ;;
            --variants) variants=$2; shift 2 ;;
            --no-pytorch) pytorch=0; shift ;;
            --no-workload) workload=0; shift ;;
            *) die "run: unknown argument $1" ;;
        esac
    done
    [[ -f $load/whisper-trt.xz ]] || die "$load was not carried (name it in the call's carry)"
    local out=${OUT:-$STAGE/out}
    mkdir -p "$STAGE" "$out"
    export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PYTHONUNBUFFERED=1
    xz -dc "$load/whisper-trt.xz" >"$STAGE/whisper-trt"
    chmod +x "$STAGE/whisper-trt"
    local log=$out/bench-gpu.log
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv 2>&1 | tee -a "$log" || true
    local w=() p=()
    if [[ $workload == 1 ]]; then
        w=(--transcripts "$load/test-clean.trans.txt" --tokenizer "$load/tokenizer.json")
        p=(--transcripts "$load/test-clean.trans.txt" --tokenizer "$load/tokenizer.json" --batch1-sample "$sample"
           --workload-batch "${batch##*,}")
    else
        w=(--no-workload)
    fi
    local size status=0
    for size in $sizes; do
        local v q suffix
        for v in $variants; do
            case $v in
                fp16) q=(); suffix="" ;;
                w8) q=(--weight-only int8); suffix=-w8 ;;
                kv8) q=(--int8-kv --calib "$load/calib"); suffix=-kv8 ;;
                w8kv8) q=(--weight-only int8 --int8-kv --calib "$load/calib"); suffix=-w8kv8 ;;
                *) die "run: unknown variant $v (fp16, w8, kv8, w8kv8)" ;;
            esac
            echo "== whisper-trt bench $size $v" | tee -a "$log"
            "$STAGE/whisper-trt" bench --synthetic "$size" --batch "$batch" --steps "$steps" "${w[@]}" "${q[@]}" \
                --json "$out/ours-$size$suffix.json" 2>&1 | tee -a "$log" || status=1
        done
        if [[ $pytorch == 1 ]]; then
            echo "== bench_pytorch.py $size" | tee -a "$log"
            python3 "$repo/scripts/bench_pytorch.py" --size "$size" --batch "$batch" "${p[@]}" \
                --json "$out/pytorch-$size.json" 2>&1 | tee -a "$log" || status=1
        fi
    done
    for size in $sizes; do
        if [[ -f $out/ours-$size.json && -f $out/pytorch-$size.json ]]; then
            compare "$out/ours-$size.json" "$out/pytorch-$size.json" 2>&1 | tee -a "$log" || status=1
        fi
    done
    return $status
}

case ${1:-} in
    pack) shift; pack "$@" ;;
    run) shift; run "$@" ;;
    compare) shift; compare "$@" ;;
    *) die "usage: scripts/bench-gpu.sh pack | run DIR [options] | compare OURS.json PYTORCH.json" ;;
esac
