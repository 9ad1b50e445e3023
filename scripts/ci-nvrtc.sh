#!/usr/bin/env bash
# Installs NVRTC (CUDA 13.0.88, pinned) from PyPI wheels so kernels compile on a machine with no
# CUDA toolkit and no GPU, as CI does.
#
#   scripts/ci-nvrtc.sh            # install (idempotent) and print the exports
#   env=$(scripts/ci-nvrtc.sh --env) && eval "$env"   # set the variables in this shell
#
# The wheels go into <repo>/.dev/nvrtc with `pip install --target` (no virtualenv; .dev is
# git-ignored). cudarc loads NVRTC with dlopen("libnvrtc.so", then "libnvrtc.so.13", ...), which
# searches LD_LIBRARY_PATH, so the wheel's lib folder is exported there (NVRTC itself then
# dlopens libnvrtc-builtins.so.13.0 from the same path). cuda_fp16.h comes from the
# nvidia-cuda-runtime wheel; whisper-trt reads its folder from WHISPER_TRT_CUDA_INCLUDE (and
# finds <repo>/.dev/nvrtc by itself when that is unset).
#
# Versions are pinned on purpose: never let them float above 13.0 (the H100 runs driver 580 /
# CUDA 13.0, and a newer NVRTC emits cubins that driver may refuse).
set -euo pipefail

die() { echo "ci-nvrtc.sh: error: $*" >&2; exit 1; }

env_only=0
[[ ${1:-} == --env ]] && env_only=1

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=$repo/.dev/nvrtc
version=13.0.88
packages=(
    "nvidia-cuda-nvrtc==$version"
    "nvidia-cuda-nvcc==$version"
    "nvidia-nvvm==$version"
    "nvidia-cuda-crt==$version"
    # cuda_fp16.h (and the headers it includes) ship only in the runtime wheel: none of the four
    # above has them, and NVRTC 13.0 does not build them in.
    "nvidia-cuda-runtime==$version"
)
# The stamp names the package list, so changing the list reinstalls.
stamp=$target/.installed-$(echo "${packages[*]}" | cksum | cut -d" " -f1)

if [[ ! -f $stamp ]]; then
    command -v python3 >/dev/null || die "python3 is needed (pip installs the NVRTC wheels)"
    python3 -m pip --version >/dev/null 2>&1 || die "pip is needed: python3 -m pip is not available"
    # A partial earlier install is discarded so pip never mixes versions.
    rm -rf "$target"
    mkdir -p "$target"
    echo "ci-nvrtc.sh: installing ${packages[*]} into $target" >&2
    python3 -m pip install --quiet --root-user-action=ignore --no-deps --no-compile --target "$target" "${packages[@]}" >&2 \
        || die "pip install failed (network to PyPI needed)"
    touch "$stamp"
fi

# Locate the files inside the wheels rather than hard-coding their layout.
lib=$(find "$target" -name 'libnvrtc.so.13' -print -quit)
[[ -n $lib ]] || die "libnvrtc.so.13 not found under $target (remove it and run again)"
lib_dir=$(dirname "$lib")
header=$(find "$target" -name 'cuda_fp16.h' -print -quit)
[[ -n $header ]] || die "cuda_fp16.h not found under $target (remove it and run again)"
include_dir=$(dirname "$header")

# cudarc tries the bare name libnvrtc.so first; the wheel ships only the versioned name.
[[ -e $lib_dir/libnvrtc.so ]] || ln -s libnvrtc.so.13 "$lib_dir/libnvrtc.so"

ld_path=$lib_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if [[ $env_only == 1 ]]; then
    printf 'export LD_LIBRARY_PATH=%q\n' "$ld_path"
    printf 'export WHISPER_TRT_CUDA_INCLUDE=%q\n' "$include_dir"
else
    echo "ci-nvrtc.sh: NVRTC $version is in $lib_dir, cuda_fp16.h in $include_dir"
    echo "export LD_LIBRARY_PATH=$lib_dir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
    echo "export WHISPER_TRT_CUDA_INCLUDE=$include_dir"
fi
