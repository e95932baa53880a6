"""The KServe v2 gRPC client of the exported DQN: the players and the benchmarks talk through it.

Its channel to one server or several (TLS, the player's key, retries and balancing), the
checks of each server's model at connection and of every answer, its errors, and its
latency figures. Imports ``core`` and ``kserve`` only: neither Chainer, cv2, gymnasium, the
ALE nor pygame (a client install has all it needs).
"""
