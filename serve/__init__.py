"""``serve``: an HTTP inference server for exported lesionlite models (FastAPI + uvicorn).

It learns everything about a model from its manifest (class names, input layout/dtype/quantization,
preprocessing, calibration temperature) and never imports torch, ``distill`` or ``export``; the
image → tensor step is :func:`lesionlite.preprocessing.preprocess`, the same code training used.

Entry points: ``lesionlite serve MODEL_DIR`` (:mod:`serve.cli`) and the app factory
:func:`serve.app.create_app`. Besides its own ``/predict`` routes it speaks the Open Inference Protocol
v2 (health, metadata and ``/v2/models/{name}/infer``: :mod:`serve.infer`, wire format :mod:`serve.oip`).
"""
