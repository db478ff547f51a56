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
#                  adopts the runs (`biograd reproduce PAPER --budget standard --merge-from`,
#                  which also rewrites the reports) for p3-weight-transport and p2-ldrl;
#                  then commit results/ and docs/results/
#
#   or there:      device run, carry [".gpu"] (and ".whl" for BioTorch's row, see below),
#                  command: bash scripts/gpu_fill.sh measure, timeout_s 570
#                  every CUDA measurement issues 12, 14 and 15 ask for, one Markdown file per
#                  benchmark in $OUT (about 8 minutes on an H100/H200; each benchmark has its
#                  own time limit, the most wanted first); copy the tables into docs/results.md.
#                  BioTorch's column needs its wheel (pure Python), fetched here once:
#                  echo /.whl/ >> .git/info/exclude
#                  python3 -m pip download --no-deps -d .whl biotorch==0.0.16
#
# A finished run keeps its own fingerprint: the git commit, the code hash of its rule and the
# hardware it ran on, so the reports say which runs came from the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
# which papers' runs to train, and the datasets they need: GPU_FILL_PAPERS='p1-lra'
# GPU_FILL_DATASETS='mnist fashion_mnist' on every step (pack, train, unpack) for P1's cells
read -r -a PAPERS <<< "${GPU_FILL_PAPERS:-p3-weight-transport p2-ldrl}"
read -r -a DATASETS <<< "${GPU_FILL_DATASETS:-mnist}"
for ds in "${DATASETS[@]}"; do
    case "$ds" in mnist|fashion_mnist) ;; *) echo "GPU_FILL_DATASETS: unknown dataset '$ds' (mnist, fashion_mnist)" >&2; exit 2 ;; esac
done

finished_runs() {  # run directories with a fingerprint and a final summary
    for p in "${PAPERS[@]}"; do
        find "results/$p/standard" -name fingerprint.json -not -path '*/.stale/*' 2>/dev/null |
            while read -r f; do
                d=$(dirname "$f")
                [ -f "$d/summary.json" ] && echo "$d"
            done
    done
}

unpack_data() {  # .gpu/DATASET/*.gz -> $BIOGRAD_DATA/DATASET
    for ds in "${DATASETS[@]}"; do
        mkdir -p "$BIOGRAD_DATA/$ds"
        for f in ".gpu/$ds"/*.gz; do
            [ -f "$f" ] || { echo "no .gpu/$ds: run 'bash scripts/gpu_fill.sh pack' here and carry .gpu" >&2; exit 2; }
            gunzip -c "$f" > "$BIOGRAD_DATA/$ds/$(basename "$f" .gz)"
        done
    done
}

bench() {  # bench NAME SECONDS CMD...: CMD's stdout to $out/NAME.md, its stderr to $out/errors.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$out/errors.log"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.md" 2>> "$out/errors.log"
    echo "   rc=$? in $((SECONDS - t0)) s" | tee -a "$out/errors.log"
    tail -n 12 "$out/$name.md"
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
    unpack_data
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
    walls=$(for p in "${PAPERS[@]}"; do ls "results/$p/standard/wall_seconds.json" 2>/dev/null; done)
    [ -n "$new" ] && tar czf "$out/runs.tgz" --exclude='checkpoint*' $new $walls
    ls -la "$out"
    ;;
measure)
    out=${OUT:-/tmp/gpu_measure_out}
    mkdir -p "$out"
    export BIOGRAD_DATA=/tmp/biograd_data PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
    unpack_data
    if ls .whl/biotorch-*.whl > /dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/biotorch-*.whl &&
            export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
    { nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } \
        > "$out/device.md" 2>&1
    cat "$out/device.md"
    # issue 12 item 3 (and PC's CUDA cost): Z-IL, its full dynamics and PC (T=20) / backprop
    bench zil_cost 170 python3 benchmarks/zil_cost.py --device cuda --repeats 30 \
        --resnet18-batch 128 --pc --full
    # issue 15 item 2 on CUDA: the backward-replacement rules on ResNet-18, width 64, batch 128
    bench speed_resnet18 110 python3 benchmarks/speed.py --model resnet18 --batch 128 \
        --device cuda --no-step-only --repeats 11 --rules feedback_alignment sign_symmetry \
        direct_feedback_alignment kolen_pollack weight_mirror
    # issue 15 item 1 on CUDA: beside BioTorch (when its wheel came along), the rules it has
    bench vs_biotorch 100 python3 benchmarks/vs_biotorch.py --device cuda --threads 1 \
        --rules feedback_alignment sign_symmetry direct_feedback_alignment kolen_pollack \
        weight_mirror zil
    # issue 15 item 3 on CUDA: the iterative rules on the demo MLP
    bench iterative_speed 80 python3 benchmarks/iterative_speed.py --device cuda --repeats 11
    # issue 14: the engine's overhead over a bare loop
    bench engine_overhead 60 python3 benchmarks/engine_overhead.py --device cuda --rounds 5
    ls -la "$out"
    ;;
unpack)
    # into a scratch folder, then adopted by `reproduce --merge-from`: only runs finished there
    # whose fingerprint is current for this checkout, never over a finished current run here
    tgz=${2:?path of runs.tgz}
    tar tzf "$tgz" | grep -q 'checkpoint' && { echo "$tgz holds checkpoints: refusing" >&2; exit 2; }
    biograd=(.venv/bin/biograd)
    [ -x "${biograd[0]}" ] || biograd=(python3 -m biograd)
    scratch=$(mktemp -d)
    tar xzf "$tgz" -C "$scratch"
    for p in "${PAPERS[@]}"; do
        [ -d "$scratch/results/$p/standard" ] || continue
        "${biograd[@]}" reproduce "$p" --budget standard --merge-from "$scratch/results" --no-train ||
            { rm -rf "$scratch"; exit 1; }
    done
    rm -rf "$scratch"
    ;;
*)
    sed -n 2,28p "$0"
    exit 2
    ;;
esac
