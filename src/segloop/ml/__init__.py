"""Layer 3, ml: one shared network per task that segments, follows clicks and learns from saved labels.

Modules (one concept each):

- `networks`: registry of named 3-D architectures built from a plain config dict.
- `clicks`: the `Click` record and parsing of click specifications.
- `guidance`: clicks -> extra input channels (one per class, background included).
- `preprocess`: per-image intensity normalisation and resampling to/from the model grid.
- `virtual_user`: simulated clicks from a reference mask.
- `training`: `train` a model version from the store's final labels.
- `predictor`: automatic and interactive inference (`Predictor`, `InteractiveSession`).
- `evaluate`: `evaluate_model` against the store's final labels.

Submodules are imported lazily by their users so that importing `segloop.ml` stays cheap.
"""
