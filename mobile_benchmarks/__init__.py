"""mobile_benchmarks: measure exported lesionlite artifacts (ONNX, TFLite; CoreML is reported as
not runnable on Linux) on this host, an attached Android phone (adb + TFLite ``benchmark_model``)
or a Linux board over ssh. Torch-free: importable with only numpy, Pillow and the runtimes.

Entry point: ``lesionlite bench …`` ≡ ``python -m mobile_benchmarks …`` (see :mod:`mobile_benchmarks.cli`).
"""
BENCH_SCHEMA = "lesionlite-bench/1"
