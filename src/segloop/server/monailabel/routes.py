"""The MONAI-Label-compatible routes (see the package docstring for the contract and decisions),
one module per concept: `info`, `infer`, `activelearning`, `datastore`, `train`, `sessions`,
`scoring` (with `/logs/`); `common` holds the router they all register on. Importing this module
registers them all."""

from __future__ import annotations

from segloop.server.monailabel import activelearning, datastore, infer, info, scoring, sessions, train
from segloop.server.monailabel.common import router

__all__ = ["router", "activelearning", "datastore", "infer", "info", "scoring", "sessions", "train"]
