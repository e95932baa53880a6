"""The model's I/O contract: what training, conversion, serving and both players must agree on.

One place for the facts every stage relies on, so that none of them has to import
another stage (or cv2, gymnasium, Chainer, numpy) just to learn a constant. Standard
library only: ``tests/test_dependencies.py`` imports this module with everything else
blocked.

The contract, end to end:

- An observation is a stack of :data:`STACK_SIZE` grayscale frames of
  :data:`FRAME_SIZE` x :data:`FRAME_SIZE` pixels, oldest first, channels first:
  :data:`FRAME_STACK_SHAPE`, uint8 as the env wrappers produce it.
- The model's input is that stack as float32 divided by :data:`PIXEL_MAX` (values in
  [0, 1]), batched as ``[batch, *FRAME_STACK_SHAPE]``, in the tensor :data:`INPUT_NAME`
  of data type :data:`DATATYPE`.
- The model's output, tensor :data:`OUTPUT_NAME` (:data:`DATATYPE`), holds one row of
  Q-values per frame stack, ``[batch, n_actions]``: the players take the argmax. The
  action count is the game's and is read from the model, never assumed.
- The game a model plays is recorded under :data:`ENV_ID_KEY`: in an agent
  directory's :data:`AGENT_STATE_FILE` and as a string parameter of the model's
  ``config.pbtxt``; with none recorded, every command plays :data:`DEFAULT_ENV_ID`.
- A Triton repository serves the model as :data:`DEFAULT_MODEL_NAME` unless told otherwise.
"""

from __future__ import annotations

# Each frame: the 84x84 grayscale image of DeepMind's preprocessing (ChainerRL's WarpFrame).
FRAME_SIZE = 84
# Frames per observation (ChainerRL's FrameStack k=4).
STACK_SIZE = 4
FRAME_STACK_SHAPE: tuple[int, int, int] = (STACK_SIZE, FRAME_SIZE, FRAME_SIZE)
# uint8 pixels are divided by this before they reach the network (ChainerRL's phi).
PIXEL_MAX = 255

# Tensor names of the exported model and of the served one. The output holds Q-values
# (one per action), not an action; the name is kept because the 2019 client asks for "action".
INPUT_NAME = "input"
OUTPUT_NAME = "action"
# The KServe v2 data type of both tensors (Triton's config spells it TYPE_FP32).
DATATYPE = "FP32"

# The share of random actions in evaluation and play (DeepMind's evaluation setting; the 2019 demo played with it).
EVAL_EPSILON = 0.05
# The game every command plays unless told otherwise (the 2019 demo's).
DEFAULT_ENV_ID = "BreakoutNoFrameskip-v4"
# The key of the model's game: in agent_state.json, and the config parameter of a model repository.
ENV_ID_KEY = "env_id"
# The file in every agent directory this project writes (step, action count, game).
AGENT_STATE_FILE = "agent_state.json"
# The config parameter in which serve's python-backend twin records the model's own max_batch_size, the
# most frame stacks one request may carry (the twin's own max_batch_size, what Triton may merge into
# one execution, is a multiple of it); players split a wave of stacks at it.
REQUEST_BATCH_KEY = "max_batch_size"
# The model name the converter writes and the players ask for by default.
DEFAULT_MODEL_NAME = "atari"

# ChainerRL's reproduction scores an agent on episodes of at most 5 minutes of play: 18,000
# frames, 4,500 agent steps. Training's final evaluation and every play episode (unless
# --max-steps) are capped at this.
EVALUATION_EPISODE_CAP = 4500
