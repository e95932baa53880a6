"""Play: the KServe v2 client, where Q-values come from (the server, or Chainer here), the one
play loop for 1..N games, the pygame window and recording, and the players' command lines.

Imports ``core`` and ``kserve``; the standalone player's Chainer policy imports ``train.agent``
inside the function that builds it, so the remote player never needs Chainer.
"""
