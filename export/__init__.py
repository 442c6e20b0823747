"""export: turn a trained student into on-device artifacts (ONNX, TFLite, CoreML) with a parity report.

Entry points: ``lesionlite export …`` / ``python -m export …`` (:mod:`export.cli`) and the Python API
:func:`export.api.export_model`. Every artifact is written to its own directory beside its own
``manifest.json`` (:class:`lesionlite.manifest.Manifest`), which is the contract `serve` and
`mobile_benchmarks` read without torch.
"""
