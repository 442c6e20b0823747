"""lesionlite: distill, export, serve and benchmark on-device skin-lesion classifiers.

This package holds the contracts shared by every stage and importable without torch:
preprocessing (:mod:`lesionlite.preprocessing`), the artifact manifest
(:mod:`lesionlite.manifest`), atomic writes and user-facing errors, and the ``lesionlite`` CLI.
"""
__version__ = "0.1.0"
