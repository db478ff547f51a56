"""Paper reports find arms by role (an arm's ``role:`` key, else its rule), never by label: a
preset with renamed arms still compares the same runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from biograd.core.errors import ConfigError
from biograd.experiments.paper_report import REFERENCE, Context
from biograd.experiments.reproduce import plan
from biograd.papers import load_preset


def _ctx(preset: dict) -> Context:
    return Context(plan(preset, "quick"), {}, Path("."), 0.0, [])


def test_renamed_arms_are_found_by_rule_or_role() -> None:
    preset = load_preset("p3-weight-transport")
    arms = preset["arms"]
    arms["BP (exact)"] = arms.pop("backprop")
    arms["KP"] = arms.pop("kolen_pollack")
    ctx = _ctx(preset)
    assert ctx.arm(REFERENCE) == "BP (exact)" and ctx.arm("kolen_pollack") == "KP"
    arms["mine"] = {**arms["KP"], "role": "kolen_pollack"}  # an explicit role wins
    assert _ctx(preset).arm("kolen_pollack") == "mine"


def test_a_missing_or_ambiguous_role_is_an_error() -> None:
    preset = load_preset("p3-weight-transport")
    preset["arms"]["bp2"] = dict(preset["arms"]["backprop"])
    with pytest.raises(ConfigError, match="exactly one arm for role 'reference'"):
        _ctx(preset).arm(REFERENCE)
    assert _ctx(preset).find_arm("zil") is None
