"""Regenerate docs/results/README.md and the summary table of README.md (between
``<!-- summary:start -->`` and ``<!-- summary:end -->``) from the reports' JSON files
(docs/results/PAPER.json for the standard budget, PAPER-quick.json, PAPER-full.json); one row
per paper from its largest budget. ``biograd reproduce`` does the same after every report.

    python scripts/update_results_summary.py [--out docs/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biograd.experiments.summary import update_readme_summary, write_readme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "docs" / "results"),
                        help="the report folder (default: this checkout's docs/results)")
    out = Path(parser.parse_args().out)
    print(f"wrote {write_readme(out)}")
    readme = update_readme_summary(out)
    print(f"wrote {readme}" if readme else "no README.md with summary markers above the folder")


if __name__ == "__main__":
    main()
