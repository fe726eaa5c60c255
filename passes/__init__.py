"""Adapters that run onnx-statq inside existing toolchains; installed as ``onnx_statq_passes``.

Each adapter imports its toolchain; the core ``onnx_statq`` package imports none of them.
"""
