"""The driver: a study run on Ray Tune (Optuna's searcher and samplers, the schedulers and
stoppers, where trials go, the journal that makes it resumable, the finalists' re-runs)."""
