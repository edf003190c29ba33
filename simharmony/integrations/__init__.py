"""Integrations with other tools. Each subpackage imports its tool lazily, so the core never needs them.

- :mod:`simharmony.integrations.nerfstudio`: a "Harmonizer" toggle and a "harmonized" output in the
  nerfstudio viewer (method ``splatfacto-harmonized``, ``simharmony ns-view`` for existing checkpoints).
"""
