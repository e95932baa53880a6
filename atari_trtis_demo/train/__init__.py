"""Training: the ChainerRL DQN, its training loop, checkpoints, the published models, the learning curve.

Needs Chainer and ChainerRL. Only ``convert`` and the standalone player (lazily) import it.
"""
