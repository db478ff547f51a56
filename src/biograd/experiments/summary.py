"""Where the reproduction reports live and the cross-paper summaries generated from them.

Layout of the report folder (``docs/results`` by default): a paper's ``standard`` report is
``PAPER.md`` with ``PAPER.json`` (its verdicts and key numbers) and its figures in ``PAPER/``;
the other budgets' reports are ``PAPER-quick.md``/``PAPER-quick.json``/``PAPER-quick/`` and
``PAPER-full...`` (:func:`report_stem`). ``OUT/README.md`` and the summary table of the
repository's ``README.md`` (between ``<!-- summary:start -->`` and ``<!-- summary:end -->``)
are generated from the JSON files, one row per paper from its best report (full over standard
over quick, :data:`BUDGET_RANK`), linking the others. Regenerate them with
``python scripts/update_results_summary.py`` (``biograd reproduce`` does it after each report).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

#: which report of a paper the summaries show when several budgets exist (highest wins)
BUDGET_RANK = {"quick": 1, "standard": 2, "full": 3}
#: the budget whose report is ``PAPER.md`` itself
MAIN_BUDGET = "standard"
START, END = "<!-- summary:start -->", "<!-- summary:end -->"


def report_stem(paper: str, budget: str) -> str:
    """``PAPER`` for the standard budget, ``PAPER-BUDGET`` for the others."""
    return paper if budget == MAIN_BUDGET else f"{paper}-{budget}"


def settle_reports(out: Path, paper: str) -> None:
    """Move a report of another budget found at ``OUT/PAPER.md`` (written before this layout)
    to its own name (``PAPER-BUDGET.md``, ``.json`` and figure folder, links rewritten), so
    ``PAPER.md`` is free for the standard report and nothing is lost."""
    old = out / f"{paper}.json"
    if not old.is_file():
        return
    budget = json.loads(old.read_text()).get("budget")
    if budget in (None, MAIN_BUDGET):
        return
    stem = report_stem(paper, budget)
    md = out / f"{paper}.md"
    if md.is_file():
        text = md.read_text().replace(f"]({paper}/", f"]({stem}/")
        (out / f"{stem}.md").write_text(text)
        md.unlink()
    old.replace(out / f"{stem}.json")
    figs = out / paper
    if figs.is_dir():
        if (out / stem).exists():
            shutil.rmtree(out / stem)
        figs.replace(out / stem)


def reports(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every report summary ``OUT/p*.json`` by paper, best budget first; each gets ``report``
    (its Markdown file name)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(out).glob("p*.json")):
        try:
            s = json.loads(path.read_text())
        except ValueError:
            continue
        if not isinstance(s, dict) or "paper" not in s:
            continue
        found.setdefault(s["paper"], []).append({**s, "report": path.with_suffix(".md").name})
    for runs in found.values():
        runs.sort(key=lambda s: -BUDGET_RANK.get(s.get("budget"), 0))
    return dict(sorted(found.items()))


def _budget_cell(s: dict[str, Any]) -> str:
    seeds = s.get("seeds", 1)
    text = f"{s.get('budget')} ({seeds} seed{'s' * (seeds > 1)}"
    wall = s.get("wall_seconds")
    text += f", {wall:.0f} s" if isinstance(wall, (int, float)) else ""
    if s.get("missing"):
        text += f", {s['missing']} of {s.get('runs')} runs missing"
    return text + ")"


def table(out: Path, prefix: str = "") -> list[str]:
    """The cross-paper Markdown table: one row per paper from its best report; links are
    ``prefix + file`` (``docs/results/`` from the repository root)."""
    rows = ["| paper | what | budget | verdict per claim (in the report's order) | "
            "key numbers |", "| --- | --- | --- | --- | --- |"]
    for paper, found in reports(out).items():
        s, others = found[0], found[1:]
        verdict = " · ".join(s.get("verdicts", [])) or "-"
        budget = _budget_cell(s)
        if others:
            budget += "; also " + ", ".join(f"[{o.get('budget')}]({prefix}{o['report']})"
                                            for o in others)
        rows.append(f"| [{paper}]({prefix}{s['report']}) | {s.get('title', '')} | {budget} | "
                    f"{verdict} | {s.get('key_numbers', '')} |")
    return rows


def caption(out: Path) -> str:
    """One sentence saying which budgets the table shows."""
    shown = [found[0].get("budget") for found in reports(out).values()]
    kinds = ", ".join(f"{shown.count(b)} at {b}" for b in BUDGET_RANK if b in shown)
    return (f"Summary of the committed reports, one row per paper from its largest budget "
            f"({kinds or 'none yet'}); the budget column gives the seeds and the wall time "
            "behind the report (its runs when they were trained, its stored measurements when "
            "they were made, and the report's own invocation); see each report for the "
            "tables, plots, the statistic, spread and threshold of each claim check, and why "
            "a claim is not testable at its budget.")


def write_readme(out: Path) -> Path:
    """``OUT/README.md``: how the reports are made and the cross-paper table."""
    text = "\n".join([
        "# Reproductions of the five defining papers", "",
        "Each report is regenerated by `biograd reproduce PAPER --budget quick|standard|full` "
        "(docs/usage.md). `standard` reports are `PAPER.md`; they are built from runs "
        "committed in the results store `results/PAPER/standard/` (full training and test "
        "sets, at least 3 seeds, backprop converged) and rebuilt without training by "
        "`biograd reproduce PAPER --budget standard --no-train`. `quick` reports "
        "(`PAPER-quick.md`) are minutes on a 2-core CPU (subsets, few epochs, one seed): they "
        "check the mechanics and the direction of each claim, not the papers' numbers. "
        "Verdicts per claim are in each report.", "",
        "```bash",
        "biograd reproduce p3-weight-transport --budget standard --check  # what is stale, "
        "writes nothing",
        "biograd reproduce p3-weight-transport --budget standard --no-train  # report only",
        "biograd reproduce p3-weight-transport --budget standard --train-minutes 60",
        "biograd reproduce p1-lra --budget quick --out /tmp/r --epochs=5  # any config key",
        "```", "",
        "Presets: `src/biograd/papers/presets/PAPER.yaml`. Standard runs are kept in "
        "`results/PAPER/standard/`, the others in `runs/reproduce/PAPER/BUDGET/` (`--runs "
        "DIR`); finished runs are reused, interrupted ones resumed and runs whose config or "
        "rule code changed retrained (`--overwrite` retrains everything).", "",
        caption(out), "", *table(out), ""])
    path = Path(out) / "README.md"
    path.write_text(text)
    return path


def repository_readme(out: Path) -> Path | None:
    """The repository's ``README.md`` when ``out`` is its ``docs/results`` and the README has
    the summary markers, else None (a report written elsewhere never touches it)."""
    out = Path(out).resolve()
    if out.parts[-2:] != ("docs", "results"):
        return None
    readme = out.parent.parent / "README.md"
    if not readme.is_file() or START not in readme.read_text():
        return None
    return readme


def update_readme_summary(out: Path, readme: Path | None = None) -> Path | None:
    """Regenerate the table between the summary markers of ``readme`` (default:
    :func:`repository_readme`) from ``OUT/*.json``; returns the file written, or None."""
    readme = readme or repository_readme(out)
    if readme is None:
        return None
    prefix = Path(out).resolve().relative_to(readme.parent.resolve()).as_posix() + "/"
    block = "\n".join([START, "", caption(out), "", *table(out, prefix), "", END])
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        return None
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return readme


def refresh(out: Path) -> None:
    """Regenerate ``OUT/README.md`` and the repository README's summary table."""
    write_readme(out)
    update_readme_summary(out)
