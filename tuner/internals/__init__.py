"""Every use of a library's private API, fenced: one module per library (Ray, Optuna, MLflow),
one function or class per use, each with the test that fails loudly when the library changes it
(tests/test_<library>_internals.py). pyproject.toml pins each library to the versions these were
tested on; nothing else in tuner reaches into a library's internals."""
