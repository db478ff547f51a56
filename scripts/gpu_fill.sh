#!/usr/bin/env bash
# Issue 16: fill a lent GPU session with the standard budget's most expensive missing runs,
# P3's and P2's MNIST LeNet arms (hours per run on the project's 2-core CPU, about a minute or
# two on an H100/H200). The runs go into the results store like any other (device and threads
# are not part of a run's fingerprint), so a report rebuilt here reads them.
#
#   here, once:    bash scripts/gpu_fill.sh pack
#                  copies MNIST (gzipped, ~11 MB) into .gpu/, which git ignores
#   there:         device run, carry [".gpu"], command: bash scripts/gpu_fill.sh train 7
#                  trains for 7 minutes (no run starts after that; the command stops the
#                  ones still going 2 minutes later), then packs every finished run (config,
#                  metrics, summary, angles, fingerprint; never checkpoints) into $OUT/runs.tgz
#   here, after:   bash scripts/gpu_fill.sh unpack FILES_AT/runs.tgz
#                  then `biograd reproduce p3-weight-transport --budget standard --no-train`
#                  (and p2-ldrl) and commit results/ and docs/results/
#
# A finished run keeps its own fingerprint: the git commit, the code hash of its rule and the
# hardware it ran on, so the reports say which runs came from the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PAPERS=(p3-weight-transport p2-ldrl)
DATASETS=(mnist)

finished_runs() {  # run directories with a fingerprint and a final summary
    for p in "${PAPERS[@]}"; do
        find "results/$p/standard" -name fingerprint.json -not -path '*/.stale/*' 2>/dev/null |
            while read -r f; do
                d=$(dirname "$f")
                [ -f "$d/summary.json" ] && echo "$d"
            done
    done
}

case "${1:-}" in
pack)
    root=${BIOGRAD_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/biograd}
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    for ds in "${DATASETS[@]}"; do
        mkdir -p ".gpu/$ds"
        for f in "$root/$ds"/*-ubyte; do
            [ -f "$f" ] || { echo "no $root/$ds: run 'biograd data fetch $ds' first" >&2; exit 2; }
            gzip -c "$f" > ".gpu/$ds/$(basename "$f").gz"
        done
    done
    du -sh .gpu
    ;;
train)
    minutes=${2:-7}
    device=${DEVICE:-cuda}
    out=${OUT:-/tmp/gpu_fill_out}
    mkdir -p "$out"
    export BIOGRAD_DATA=/tmp/biograd_data PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
    for ds in "${DATASETS[@]}"; do
        mkdir -p "$BIOGRAD_DATA/$ds"
        for f in ".gpu/$ds"/*.gz; do
            [ -f "$f" ] || { echo "no .gpu/$ds: run 'bash scripts/gpu_fill.sh pack' here and carry .gpu" >&2; exit 2; }
            gunzip -c "$f" > "$BIOGRAD_DATA/$ds/$(basename "$f" .gz)"
        done
    done
    python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
    before=$(finished_runs | sort)
    for p in "${PAPERS[@]}"; do
        timeout $(( (minutes + 2) * 60 )) python3 -m biograd reproduce "$p" --budget standard \
            --device="$device" --jobs 4 --train-minutes "$minutes" > "$out/$p.log" 2>&1 &
    done
    wait
    tail -n 3 "$out"/*.log
    new=$(comm -13 <(echo "$before") <(finished_runs | sort) | sed '/^$/d')
    echo "finished runs: $(echo "$new" | sed '/^$/d' | wc -l)"
    [ -n "$new" ] && tar czf "$out/runs.tgz" --exclude='checkpoint*' $new
    ls -la "$out"
    ;;
unpack)
    tgz=${2:?path of runs.tgz}
    tar tzf "$tgz" | grep -q 'checkpoint' && { echo "$tgz holds checkpoints: refusing" >&2; exit 2; }
    tar xzf "$tgz"
    tar tzf "$tgz" | grep summary.json | sed 's|/summary.json||'
    ;;
*)
    sed -n 2,19p "$0"
    exit 2
    ;;
esac
