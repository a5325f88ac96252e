"""Look inside trained adapters: dW per adapted weight, its spectrum and rank, Lily's experts.

``python -m vtab_lily.analyze RUNS...`` reads finished runs (``vtab_lily.run``'s folders),
rebuilds each model, composes every linear weight update (``compose``), summarises the
spectra and experts at each evaluation (``analysis``, ``spectra``) and writes a markdown page
per task with figures (``report``). Reads only: it never changes a run folder.
"""
