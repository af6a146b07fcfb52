"""Byte-stream stages: compression codecs, crypters (later) and counting/hashing wrappers.

Every stage is an ordinary file-like object over another one, so a pipeline is built by nesting
and each stage is testable on ``io.BytesIO``.
"""
