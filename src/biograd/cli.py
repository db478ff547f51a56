"""The ``biograd`` command line (also ``python -m biograd``).

    biograd train   [--config F] [--resume DIR] [--overwrite] [--key=value ...]
    biograd compare [--config F] [--overwrite] [--jobs N] [--key=value ...]
    biograd reproduce PAPER [--budget quick|standard|full] [--seeds N] [--out DIR] [--jobs N]
                      [--no-train | --check] [--train-minutes M] [--only PATTERN ...]
                      [--merge-from DIR] [--key=value ...]
    biograd rules
    biograd data list
    biograd data fetch NAME... [--data-dir D] [--force] [--from DIR]

Every bad input prints one clear line on stderr and exits with status 2; nothing saved is
overwritten unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from biograd.core.errors import BiogradError, ConfigError

JOBS_HELP = ("runs trained at a time, in parallel processes sharing the cores (threads=0 "
             "gives each run cores/N threads); default 1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biograd", allow_abbrev=False,
        description="Train and compare biologically plausible learning rules.",
        epilog="Config keys are given as --key=value (dotted for nested: "
               "--rule_args.weight_decay=1e-4); see docs/usage.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", allow_abbrev=False, help="train one rule (one run directory)")
    train.add_argument("--config", help="YAML config file")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    comp = sub.add_parser("compare", allow_abbrev=False, help="train several rules x seeds")
    comp.add_argument("--config", help="YAML comparison file (base, arms, seeds: "
                                       "docs/usage.md)")
    comp.add_argument("--overwrite", action="store_true", help="retrain, replacing old runs")
    comp.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
    rep = sub.add_parser("reproduce", allow_abbrev=False,
                         help="reproduce a defining paper's experiments and write its report")
    rep.add_argument("paper", help="p1-lra, p2-ldrl, p3-weight-transport, "
                                   "p4-activation-relaxation or p5-zil")
    rep.add_argument("--budget", default="quick",
                     help="quick (minutes on a CPU), standard (committed results store) or full")
    rep.add_argument("--seeds", type=int, default=None, help="number of seeds (default: preset)")
    rep.add_argument("--out", default="docs/results", help="report folder (docs/results)")
    rep.add_argument("--runs", default=None,
                     help="run directories' root (default: results for --budget standard, "
                          "runs/reproduce otherwise)")
    rep.add_argument("--preset", default=None,
                     help="preset YAML (default: the one shipped in biograd/papers/presets/)")
    rep.add_argument("--overwrite", action="store_true", help="retrain, replacing old runs")
    rep.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
    rep.add_argument("--no-train", dest="train", action="store_false",
                     help="write the report from the stored runs and measurements only: train "
                          "and measure nothing, list the missing runs")
    rep.add_argument("--check", action="store_true",
                     help="write, train and measure nothing: list the runs and measurements "
                          "that are stale or missing, the training time they need and the "
                          "verdicts a report from what is current would give (exit 1 when "
                          "something is not up to date)")
    rep.add_argument("--train-minutes", type=float, default=None, metavar="M",
                     help="start no run or measurement after M minutes, then write the report "
                          "from what exists (a budget larger than one session accumulates)")
    rep.add_argument("--only", action="append", default=[], metavar="PATTERN",
                     help="train only the runs this chooses: EXPERIMENT, EXPERIMENT/ARM or "
                          "EXPERIMENT/ARM-sSEED, shell patterns allowed (mnist-lenet/dtp, "
                          "'*/kolen_pollack-s0'); repeatable; measures nothing; the report "
                          "still reads every run and measurement that exists")
    rep.add_argument("--merge-from", default=None, metavar="DIR",
                     help="first adopt the finished runs whose fingerprint is current here, "
                          "and the newer measurements, from another results store (DIR holds "
                          "PAPER/BUDGET/: another clone's results/, an unpacked GPU archive); "
                          "a finished current run here is never replaced")
    sub.add_parser("rules", help="list the registered learning rules")
    data = sub.add_parser("data", help="list or fetch datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dsub.add_parser("list", help="list the datasets")
    fetch = dsub.add_parser("fetch", allow_abbrev=False, help="download and verify datasets")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    fetch.add_argument("--data-dir", default=None, help="where to store them")
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    fetch.add_argument("--from", dest="source_dir", default=None, metavar="DIR",
                       help="take the files from a local folder (verified by SHA-256)")
    return parser


def _overrides(parser: argparse.ArgumentParser, extra: list[str]) -> list[str]:
    for item in extra:
        if not item.startswith("--") or "=" not in item:
            parser.error(f"unrecognised argument {item!r}: config keys are given as --key=value")
    return extra


def _cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from biograd.runner.config import load_config
    from biograd.runner.train import train
    from biograd.runner.yamlio import read_yaml

    if args.resume:
        if args.config or args.overwrite:
            raise ConfigError("--resume continues a saved run: drop --config and --overwrite")
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"cannot resume {str(run)!r}: it holds no config.yaml")
        base = {**read_yaml(run / "config.yaml"), "out_dir": str(run.parent),
                "run_name": run.name}
        cfg = load_config(None, overrides, base=base)
    else:
        cfg = load_config(args.config, overrides)
    summary = train(cfg, overwrite=args.overwrite, resume=bool(args.resume))
    acc = summary.get("test_acc")
    print(f"{summary['status']}: {summary['run_dir']} "
          f"(epochs {summary['epochs_completed']}, test_acc {acc})")
    if summary["status"] == "diverged":
        print(f"diverged at step {summary['diverged']['step']}: {summary['diverged']['reason']}",
              file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace, overrides: list[str]) -> int:
    from biograd.experiments.compare import compare
    from biograd.experiments.grid import load_grid

    result = compare(load_grid(args.config, overrides), overwrite=args.overwrite,
                     jobs=args.jobs)
    failed = [n for n, runs in result["results"].items()
              if any(s.get("status") == "failed" for s in runs)]
    print(f"wrote {result['dir']}/compare.md")
    if failed:
        print(f"biograd: some arms failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_reproduce(args: argparse.Namespace, overrides: list[str], argv: list[str]) -> int:
    from biograd.papers import check, reproduce

    if args.check:
        extra = [f for f, on in (("--no-train", not args.train), ("--overwrite", args.overwrite),
                                 ("--train-minutes", args.train_minutes is not None),
                                 ("--jobs", args.jobs != 1), ("--only", bool(args.only)),
                                 ("--merge-from", args.merge_from is not None))
                 if on]
        if extra:
            raise ConfigError(f"--check trains and writes nothing: drop {', '.join(extra)}")
        from biograd.experiments.status import lines

        status = check(args.paper, args.budget, seeds=args.seeds, out=args.out,
                       runs_dir=args.runs, overrides=overrides, preset=args.preset)
        print("\n".join(lines(status)))
        return 0 if status["current"] else 1
    summary = reproduce(args.paper, args.budget, seeds=args.seeds, out=args.out,
                        runs_dir=args.runs, overrides=overrides, preset=args.preset,
                        overwrite=args.overwrite, argv=argv, jobs=args.jobs, train=args.train,
                        train_minutes=args.train_minutes, only=args.only,
                        merge_from=args.merge_from)
    missing = (f" ({summary['missing']} of {summary['runs']} runs missing)"
               if summary.get("missing") else "")
    print(f"wrote {Path(args.out) / summary['report']}: {', '.join(summary['verdicts'])}"
          f"{missing}")
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cmd_rules() -> int:
    from biograd.core.registry import list_rules, rule_info

    rows = []
    for name in list_rules():
        info = rule_info(name)
        hp = ", ".join(f"{k}={v!r}" for k, v in info.hparams.items()) or "-"
        rows.append([name, info.family, ",".join(info.supports), info.paper, hp])
    _print_table(["name", "family", "supports", "paper", "hparams"], rows)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    import biograd.data

    if args.data_command == "list":
        rows = []
        for name in biograd.data.list_datasets():
            info = biograd.data.dataset_info(name)
            rows.append([name, "x".join(map(str, info.input_shape)), str(info.num_classes),
                         "yes" if info.fetchable else "no", info.description])
        _print_table(["name", "input", "classes", "fetchable", "description"], rows)
        return 0
    for name in args.names:
        biograd.data.dataset_info(name)  # unknown names fail before any download
    for name in args.names:
        path = biograd.data.fetch(name, data_dir=args.data_dir, force=args.force,
                                  source_dir=args.source_dir)
        print(f"{name}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``biograd`` console script; returns the exit status."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command not in ("train", "compare", "reproduce") and extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        if args.command == "train":
            return _cmd_train(args, _overrides(parser, extra))
        if args.command == "compare":
            return _cmd_compare(args, _overrides(parser, extra))
        if args.command == "reproduce":
            argv_list = list(sys.argv[1:] if argv is None else argv)
            return _cmd_reproduce(args, _overrides(parser, extra), argv_list[1:])
        if args.command == "rules":
            return _cmd_rules()
        return _cmd_data(args)
    except BiogradError as exc:
        print(f"biograd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("biograd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (``| head``): no trace
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
