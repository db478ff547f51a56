"""Learning rules, one module per rule (or tight family). Each module registers its class with
:func:`biograd.core.registry.register_rule`; importing this package imports every module of
its folder whose name does not start with ``_`` (``import biograd`` does), so adding a rule is
adding a file and the core never imports the rules."""

import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
