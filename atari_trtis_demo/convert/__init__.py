"""Conversion: a trained agent to ONNX, verified against Chainer, written into a Triton repository.

Imports ``train`` (to load the agent) and ``core``; nothing imports it but its command line.
"""
