"""Seconds per update of zil and predictive_coding (T=20) relative to backprop (P5's cost
claim: Z-IL costs about one backprop, inference learning far more).

Run: OMP_NUM_THREADS=1 python benchmarks/zil_cost.py [--repeats 30] [--batch 64]
One process, one thread; the rules are timed interleaved and the median is reported.
Times are CPU seconds of this process (time.process_time), which a shared machine perturbs
far less than wall-clock time.
"""

from __future__ import annotations

import argparse

import torch

from biograd.runner.reproduce_p5 import architectures, seconds_per_update


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"median seconds per update over {args.repeats} repeats, batch {args.batch}, "
          f"torch {torch.__version__}, 1 thread")
    print("| model | BP (ms) | zil (ms) | zil / BP | PC T=20 (ms) | PC / BP |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, maker in architectures(args.batch).items():
        t = seconds_per_update(maker, args.repeats)
        bp, zil, pc = t["backprop"], t["zil"], t["predictive_coding"]
        print(f"| {name} | {bp * 1e3:.2f} | {zil * 1e3:.2f} | {zil / bp:.2f} | "
              f"{pc * 1e3:.1f} | {pc / bp:.1f} |", flush=True)


if __name__ == "__main__":
    main()
