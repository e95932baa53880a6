"""What every stage shares: the model's I/O contract, errors and exit codes, atomic writes, the
game id, the Atari envs and wrappers, command-line helpers, and the Triton repository format.

Imports nothing of the other stages. Empty on purpose: importing one module of it (serving
imports ``model_repository``) must not pull in cv2 and gymnasium through ``envs``.
"""
