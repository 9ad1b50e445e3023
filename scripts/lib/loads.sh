# Carrying a tree of files to the GPU machine in loads of at most one device call each (a call
# carries at most 64 MiB), and putting it back together there. Sourced by scripts/gpu-test.sh and
# scripts/eval-gpu.sh, which define `die`.

# loads_split TREE OUT CAP: checksums every file of TREE, splits files over 4 MiB into parts,
# packs the files first-fit decreasing into OUT/load-1, load-2, ... of at most CAP bytes each
# (the manifest and the number of loads travel with the last one), and removes TREE.
loads_split() {
    local tree=$1 out=$2 cap=$3 part=$((4 * 1024 * 1024))
    (cd "$tree" && find . -type f ! -name manifest.sha256 -print0 | sort -z | xargs -0 sha256sum >manifest.sha256)
    (cd "$tree" && find . -type f -size +"$((part / 1024))"k -print0 | while IFS= read -r -d '' f; do
        split -b "$part" -d -a 2 "$f" "$f.part-" && rm "$f"
    done)
    python3 - "$tree" "$out" "$cap" <<'PY' || die "packing $tree into loads failed"
import os, shutil, sys
tree, out, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = []
for root, _, names in os.walk(tree):
    for n in names:
        if n != "manifest.sha256":
            p = os.path.join(root, n)
            files.append((os.path.getsize(p), os.path.relpath(p, tree)))
files.sort(reverse=True)
loads = []
for size, rel in files:
    for load in loads:
        if load[0] + size <= cap:
            load[0] += size; load[1].append(rel); break
    else:
        loads.append([size, [rel]])
for i, (size, rels) in enumerate(loads, 1):
    for rel in rels:
        dst = os.path.join(out, f"load-{i}", rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.move(os.path.join(tree, rel), dst)
    print(f"load-{i}: {size / 2**20:.1f} MiB, {len(rels)} files")
last = os.path.join(out, f"load-{len(loads)}")
shutil.move(os.path.join(tree, "manifest.sha256"), os.path.join(last, "manifest.sha256"))
with open(os.path.join(last, "loads.txt"), "w") as f:
    f.write(f"{len(loads)}\n")
PY
    rm -rf "$tree"
}

# loads_calls OUT SCRIPT RUN_ARGS: prints the device calls that stage every load but the last and
# run SCRIPT on the last one (paths relative to the repository root $repo).
loads_calls() {
    local out=$1 script=$2 args=$3 n i rel=${1#"$repo"/}
    n=$(ls -d "$out"/load-* | wc -l)
    echo "Device calls, back to back (the machine keeps /tmp only while warm):"
    for ((i = 1; i < n; i++)); do
        echo "  run carry=[\"$rel/load-$i\"]: $script stage $rel/load-$i"
    done
    echo "  run carry=[\"$rel/load-$n\"]: $script run $rel/load-$n $args"
}

# loads_stage LOAD STAGE: copies a carried load into STAGE.
loads_stage() {
    local load=${1:?stage: which load?} stage=$2
    [[ -d $load ]] || die "$load was not carried (name it in the call's carry)"
    mkdir -p "$stage"
    cp -a "$load/." "$stage/"
    echo "$(basename "$0"): staged $load into $stage ($(du -sh "$stage" | cut -f1))"
}

# loads_join STAGE: joins split files, checks every file against the manifest and unpacks the
# compressed binaries in STAGE/bin.
loads_join() {
    local stage=$1 want
    want=$(head -1 "$stage/loads.txt")
    (cd "$stage" && find . -name '*.part-00' | while read -r first; do
        local f=${first%.part-00}
        cat "$f".part-* >"$f" && rm "$f".part-*
    done)
    (cd "$stage" && sha256sum --quiet -c manifest.sha256) \
        || die "files are missing or damaged: were all $want loads staged while the machine stayed warm?"
    local x
    for x in "$stage"/bin/*.xz; do
        [[ -e $x ]] || continue
        if command -v xz >/dev/null; then xz -d -f "$x"; else
            python3 -c 'import lzma,sys,os; p=sys.argv[1]; open(p[:-3],"wb").write(lzma.open(p).read()); os.remove(p)' "$x"
        fi
    done
    chmod +x "$stage"/bin/* 2>/dev/null || true
}

# timed LABEL CMD...: runs CMD and prints its wall time on stderr (the GPU machine may have no
# /usr/bin/time).
timed() {
    local label=$1 t0 t1
    shift
    t0=$(date +%s.%N)
    "$@" || return 1
    t1=$(date +%s.%N)
    python3 -c "print('$label: wall %.2f s' % ($t1 - $t0))" >&2
}
