"""The results store: fingerprints that say whether a stored run still describes what biograd
would train now (issue 16 item 2).

Every run directory a reproduction trains or reuses gets ``fingerprint.json``:

- ``config_hash``: SHA-256 of the run's resolved config without :data:`IGNORED_KEYS` (keys
  that say where or how fast a run is trained, never what it computes);
- ``code_hash`` and ``code_files``: SHA-256 of the code that decides what the run's rule
  computes, per module (:func:`code_files`): the rule's module and, transitively, every module
  of :data:`CODE_PACKAGES` it imports, plus :mod:`biograd.models`; each file is hashed as the
  ``ast.dump`` of its syntax tree with docstrings removed, so comments, docstrings and
  formatting change nothing;
- ``git_commit`` (``git rev-parse HEAD`` of the checkout biograd runs from, or None) and
  ``biograd_version``: informational only, never compared;
- ``hardware``: the device, torch threads, CPU and CUDA device the run was trained on
  (``"not recorded"`` for runs adopted after the fact), ``wall_seconds``: how long training
  it took (the invocation that finished it; None when adopted);
- ``adopted``: true when the fingerprint was computed when the run was first reused rather
  than when it was trained;
- ``probe``: the update probe (:mod:`biograd.experiments.update_probe`): a sketch of what
  the rule holds after replaying the first steps of the run's config on fixed synthetic
  batches, in float64 and float32; ``equivalent_code``: earlier code hashes under which the
  run was trained, each replaced after the probe showed the new code computes the same.

A stored run is **stale** (:func:`stale_reasons`) when its ``config.yaml`` differs from the
config the preset resolves to now (key by key, as :func:`biograd.runner.config.same_config`:
keys added to biograd since the run was saved count as equal at their default) or when the hash
of one of its code files differs from the same file's hash now (files added to or removed from
the import closure count too) and its stored update probe, recomputed with the code now,
differs or is missing: a code change that keeps every update (a faster implementation) keeps
the run, and the next reproduction records the new code in its fingerprint. A stale run is
moved to ``ROOT/.stale/EXPERIMENT/ARM-sSEED-<UTC time>`` (:func:`move_stale`), never deleted.

Trust on first use: a run without ``fingerprint.json`` (trained before the store existed, or
interrupted before it finished) is checked on its config only; its code fingerprint is computed
from the code at hand when it is first reused (or finishes) and written then, and so is the
update probe of a run whose fingerprint predates probes. What the train
loop, data pipeline or optimizer code does is outside the fingerprint: the store tracks what
decides a rule's update, so changing one rule invalidates that rule's runs only.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from biograd import rundir
from biograd.experiments.hardware import cpu_name
from biograd.runner.config import LEGACY_KEYS, Config, keyed

FINGERPRINT = "fingerprint.json"
STALE_DIR = ".stale"
#: config keys that never change what a run computes, left out of the config check and hash:
#: where the run is stored (out_dir, run_name, data_dir), how fast or on what it runs (threads,
#: device, dist_backend: results agree up to floating-point rounding), what is kept of it
#: (checkpoint_every, keep_checkpoints, tensorboard) and the comparison keys that run configs
#: held before issue 14 (:data:`biograd.runner.config.LEGACY_KEYS`, still in stored runs)
IGNORED_KEYS = ("out_dir", "run_name", "data_dir", "threads", "device", "dist_backend",
                "checkpoint_every", "keep_checkpoints", "tensorboard", *LEGACY_KEYS)
#: packages whose modules a rule's code fingerprint follows through imports
CODE_PACKAGES = ("biograd.core", "biograd.ops", "biograd.rules", "biograd.graph",
                 "biograd.metrics", "biograd.models")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, default=str).encode()


# -- config -----------------------------------------------------------------------------------

def config_view(data: dict[str, Any]) -> dict[str, Any]:
    """A run config (``Config.to_dict()`` or a saved ``config.yaml``) without
    :data:`IGNORED_KEYS`, nor keys added to biograd later that hold their default
    (:func:`biograd.runner.config.keyed`)."""
    return keyed({k: v for k, v in data.items() if k not in IGNORED_KEYS})


def config_hash(cfg: Config) -> str:
    """SHA-256 of ``cfg`` without :data:`IGNORED_KEYS`."""
    return _digest(_canonical(config_view(cfg.to_dict())))


def config_diff(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Keys in which a saved ``config.yaml`` differs from ``cfg`` (ignoring
    :data:`IGNORED_KEYS`; a key the saved file lacks is equal when ``cfg`` holds its default,
    as :func:`biograd.runner.config.same_config`)."""
    now, defaults = config_view(cfg.to_dict()), Config().to_dict()
    saved = config_view(saved)
    differ = sorted(k for k in saved if k not in now)
    differ += [k for k, v in now.items()
               if (saved[k] != v if k in saved else v != defaults[k])]
    return differ


# -- code -------------------------------------------------------------------------------------

def ast_hash(source: str) -> str:
    """SHA-256 of a module's syntax tree without docstrings (comments and layout never reach
    the tree)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return _digest(ast.dump(tree, annotate_fields=False).encode())


def _in_scope(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in CODE_PACKAGES)


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _is_package(name: str) -> bool:
    path = _module_file(name)
    return path is not None and path.name == "__init__.py"


def _imports(name: str, path: Path) -> set[str]:
    """The biograd modules ``name`` (source ``path``) imports, anywhere in its body (lazy
    imports inside functions included); ``from PKG import NAME`` resolves to the submodule
    ``PKG.NAME`` or, for a re-exported object, the module that defines it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(_resolve_from(base, alias.name))
    return {m for m in found if m.startswith("biograd.") or m == "biograd"}


def _resolve_from(base: str, attr: str) -> str:
    if attr != "*" and _is_package(base) and _module_file(f"{base}.{attr}") is not None:
        return f"{base}.{attr}"
    if attr != "*" and _in_scope(base):
        try:
            obj = getattr(importlib.import_module(base), attr)
        except (ImportError, AttributeError):
            return base
        owner = getattr(obj, "__module__", None)
        if isinstance(owner, str) and owner.startswith("biograd."):
            return owner
    return base


def rule_module(rule: str) -> str:
    """The module that defines registered rule ``rule``."""
    from biograd.core.registry import rule_info

    return rule_info(rule).cls.__module__


def code_files(rule: str) -> dict[str, str]:
    """``{module: AST hash}`` of the code that decides what ``rule`` computes: its module and,
    transitively, every module of :data:`CODE_PACKAGES` it imports, plus :mod:`biograd.models`
    (a package's ``__init__`` is included only where it is imported by name; importing
    ``biograd.rules.x`` does not pull in the other rules). Computed once per process and rule
    (:func:`clear_cache` forgets them)."""
    return dict(_code_files(rule_module(rule)))


def clear_cache() -> None:
    """Forget the code hashes and update probes computed so far (after code changed within
    one process)."""
    _code_files.cache_clear()
    _PROBES.clear()


@functools.cache
def _code_files(module: str) -> tuple[tuple[str, str], ...]:
    todo, seen = [module, "biograd.models"], {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = ast_hash(path.read_text())
        todo.extend(m for m in _imports(name, path) if _in_scope(m) and m not in seen)
    return tuple(sorted(seen.items()))


def code_hash(files: dict[str, str]) -> str:
    """One SHA-256 over ``{module: hash}`` (:func:`code_files`)."""
    return _digest(_canonical(sorted(files.items())))


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Modules whose hash differs between two :func:`code_files` maps (added or removed ones
    marked so)."""
    out = [m for m in sorted(set(old) & set(new)) if old[m] != new[m]]
    out += [f"{m} (added)" for m in sorted(set(new) - set(old))]
    out += [f"{m} (removed)" for m in sorted(set(old) - set(new))]
    return out


# -- fingerprints -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout biograd is imported from, or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_hardware(summary: dict[str, Any] | None, *, here: bool) -> dict[str, Any]:
    """What a run was trained on: device and threads from its summary; CPU and CUDA device
    names of this machine when ``here`` (the run was trained in this process), else
    ``"not recorded"``."""
    summary = summary or {}
    device = summary.get("device", "not recorded")
    hw: dict[str, Any] = {"device": device, "threads": summary.get("threads", "not recorded"),
                          "cpu": "not recorded", "cuda": "not recorded"}
    if here:
        import torch

        hw["cpu"] = cpu_name()
        hw["logical_cpus"] = os.cpu_count()
        hw["cuda"] = (torch.cuda.get_device_name(torch.device(device))
                      if str(device).startswith("cuda") and torch.cuda.is_available() else None)
    return hw


def fingerprint(cfg: Config, summary: dict[str, Any] | None = None, *,
                adopted: bool = False, wall_seconds: float | None = None) -> dict[str, Any]:
    """The fingerprint of a run of ``cfg`` (see the module docstring); ``wall_seconds``: how
    long training it took (None when not known)."""
    from biograd import __version__

    files = code_files(cfg.rule)
    return {"rule": cfg.rule, "config_hash": config_hash(cfg), "code_hash": code_hash(files),
            "code_files": files, "ignored_config_keys": list(IGNORED_KEYS),
            "git_commit": git_commit(), "biograd_version": __version__,
            "written": _now(), "adopted": adopted, "wall_seconds": wall_seconds,
            "hardware": run_hardware(summary, here=not adopted), "probe": probe_now(cfg)}


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


_PROBES: dict[tuple[str, str], dict[str, Any]] = {}


def probe_now(cfg: Config) -> dict[str, Any]:
    """The update probe of a run of ``cfg`` with the code at hand
    (:func:`biograd.experiments.update_probe.probe`), computed once per process, config and
    code (:func:`clear_cache` forgets them)."""
    from biograd.experiments.update_probe import probe

    key = (config_hash(cfg), code_hash(code_files(cfg.rule)))
    if key not in _PROBES:
        _PROBES[key] = probe(cfg)
    return json.loads(json.dumps(_PROBES[key]))


def same_updates(stored: dict[str, Any], cfg: Config) -> str | None:
    """None when the probe in the fingerprint ``stored`` equals the probe of ``cfg`` with the
    code at hand (the rule computes what it computed when the run was trained), else why not
    (no probe stored, or what differs)."""
    from biograd.experiments.update_probe import difference, usable

    if not usable(stored.get("probe")):
        return "no update probe stored with the run"
    return difference(stored["probe"], probe_now(cfg))


def refresh_fingerprint(run_dir: Path, cfg: Config, summary: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    """A finished run reused by a reproduction: write its fingerprint when it has none
    (adopted); add the update probe to one written before probes existed, when its code is
    the code at hand; and, when its code changed since but its probe is unchanged (the run
    is current: :func:`stale_reasons`), record the new code with the old hash under
    ``equivalent_code``, so the next reuse compares against the new code. Returns the
    fingerprint as it is on disk."""
    stored = read_fingerprint(run_dir)
    if not stored or not isinstance(stored.get("code_files"), dict):
        return write_fingerprint(run_dir, cfg, summary, adopted=True)
    files = code_files(cfg.rule)
    changed = changed_files(stored["code_files"], files)
    if not changed:
        if "probe" in stored:
            return stored
        stored["probe"] = probe_now(cfg)
    elif same_updates(stored, cfg) is None:
        stored.setdefault("equivalent_code", []).append(
            {"code_hash": stored.get("code_hash"), "changed": changed, "verified": _now()})
        stored["code_files"], stored["code_hash"] = files, code_hash(files)
    else:
        return stored
    rundir.write_json(Path(run_dir) / FINGERPRINT, stored)
    return stored


def read_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / FINGERPRINT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def write_fingerprint(run_dir: Path, cfg: Config, summary: dict[str, Any] | None = None, *,
                      adopted: bool = False, wall_seconds: float | None = None
                      ) -> dict[str, Any]:
    """Write ``RUN/fingerprint.json`` (see :func:`fingerprint`) and return it."""
    data = fingerprint(cfg, summary, adopted=adopted, wall_seconds=wall_seconds)
    rundir.write_json(Path(run_dir) / FINGERPRINT, data)
    return data


def stale_reasons(run_dir: Path, cfg: Config) -> list[str]:
    """Why the stored run in ``run_dir`` no longer describes a run of ``cfg`` (empty: it
    does): config keys that differ from its ``config.yaml``; code modules whose hash changed
    since its ``fingerprint.json`` was written, unless the update probe stored there equals
    the probe with the code at hand (:func:`same_updates`: a change that leaves the rule's
    updates as they were, e.g. a faster implementation, keeps the run)."""
    return check_run(run_dir, cfg)[0]


def check_run(run_dir: Path, cfg: Config) -> tuple[list[str], list[str]]:
    """``(stale reasons, kept changes)`` of the stored run in ``run_dir``: the reasons of
    :func:`stale_reasons`, and the code modules that changed since its fingerprint while its
    update probe did not (empty unless the run is kept across a code change)."""
    from biograd.runner.yamlio import read_yaml

    why: list[str] = []
    kept: list[str] = []
    path = Path(run_dir) / rundir.CONFIG
    if path.is_file():
        keys = config_diff(read_yaml(path), cfg)
        if keys:
            why.append(f"config changed: {', '.join(keys)}")
    stored = read_fingerprint(run_dir)
    if stored is not None:
        old = stored.get("code_files")
        if not isinstance(old, dict):
            why.append("fingerprint.json unreadable")
        else:
            files = changed_files(old, code_files(cfg.rule))
            differs = same_updates(stored, cfg) if files else None
            if differs is not None:  # code changed and its updates did (or cannot be told)
                why.append(f"code of {cfg.rule} changed: {', '.join(files)} ({differs})")
            else:
                kept = files
    return why, kept


def move_stale(run_dir: Path, root: Path) -> Path:
    """Move a stale run to ``ROOT/.stale/EXPERIMENT/ARM-sSEED-<UTC time>`` (``root`` is
    ``RUNS/PAPER/BUDGET``) and return where it went."""
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = Path(root) / STALE_DIR / run_dir.parent.name / f"{run_dir.name}-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{run_dir.name}-{stamp}-{n}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(dest))
    return dest


def short(digest: str | None) -> str:
    """The first 10 hex digits of a hash (for tables)."""
    return digest[:10] if digest else "-"
