"""Play: where Q-values come from (the server through ``client``, or Chainer here), the one play
loop for 1..N games and its banks of games, the pygame window, the page in the browser, the
recording, and the players' command lines.

Imports ``core``, ``kserve`` and ``client``; the standalone player's Chainer policy imports
``train.agent`` inside the function that builds it, so the remote player never needs Chainer.
"""
