"""Train a ChainerRL DQN on Atari, export it to ONNX for Triton, and play it.

One subpackage per stage: ``core`` (shared by all), ``train``, ``convert``, ``serving`` and
``play``; imports only run downward, and ``core``, ``serving`` and ``play`` never import
``train`` or ``convert`` (docs/architecture.md; checked by tests/test_dependencies.py).
"""

__version__ = "0.1.0"
