"""Train a ChainerRL DQN on Atari, export it to ONNX for Triton, and play it.

Modules that need Chainer (``agent``, ``training``) are never imported by the
client side (``envs`` and the players' remote path).
"""

__version__ = "0.1.0"
