"""Learning rules, one module per rule (or tight family). Each module registers its class with
:func:`biograd.core.registry.register_rule`; the registry imports every module here."""
