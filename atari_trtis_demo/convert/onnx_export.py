"""Export a ChainerRL agent's Q-network to ONNX with ONNX-Chainer, clean it, verify it.

ONNX-Chainer traces the network at batch 1 and leaves three things a server dislikes:
a Reshape to the literal shape ``[1, -1]`` (batch 1 only), every weight listed as a
graph input as well as an initializer, and input/output shapes fixed at batch 1
(Triton refuses a fixed first dimension when ``max_batch_size > 0``). They are fixed
on the ONNX graph afterwards, and every export is checked against Chainer on real
preprocessed Atari frames before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import chainer
import numpy as np
import onnx
import onnx_chainer

# onnxruntime's telemetry writes a device id and a database under ~/.cache/Microsoft/ at import
# (measured with 1.32.0); the user asked for a conversion, not that. Their own setting wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort  # noqa: E402

from atari_trtis_demo.convert.convert_config import DEFAULT_REPOSITORY, ConvertOptions
from atari_trtis_demo.core.contract import AGENT_STATE_FILE, ENV_ID_KEY, FRAME_SIZE, INPUT_NAME, OUTPUT_NAME, STACK_SIZE
from atari_trtis_demo.core.envs import make_env, scale_observation
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.game_id import check_action_count, recorded_env_id, resolve_env_id
from atari_trtis_demo.core.model_config import check_config_replaceable, check_model_name, render_config
from atari_trtis_demo.core.model_repository import (
    CONFIG_FILENAME,
    existing_versions,
    write_file_atomic,
    write_model_version,
)
from atari_trtis_demo.train.agent import batch_q_values, load_q_function

OPSET = 11  # ONNX-Chainer's default; onnxruntime and Triton's ONNX backend run it
TOLERANCE = 1e-5
VERIFY_BATCHES = (1, 32)

if hasattr(ort, "disable_telemetry_events"):
    ort.disable_telemetry_events()


@dataclass
class Conversion:
    """What a conversion wrote and how well the export matched Chainer."""

    n_actions: int
    model_path: str
    config_path: str | None
    max_abs_diff: float
    env_id: str  # the game whose frames verified the export
    recorded_env_id: str | None = None  # the game the agent directory records, if any


class QValues(chainer.Chain):
    """The Q-network without ChainerRL's ``DiscreteActionValue`` head: only the Q-values.

    ONNX-Chainer can only export outputs that are ``chainer.Variable``s.
    """

    def __init__(self, q_function: chainer.Link) -> None:
        super().__init__()
        with self.init_scope():
            self.q_function = q_function

    def forward(self, x: np.ndarray) -> chainer.Variable:
        return self.q_function(x).q_values


def export_onnx(q_function: chainer.Link) -> onnx.ModelProto:
    """ONNX-Chainer's export of the Q-values, cleaned for any batch size."""
    x = np.zeros((1, STACK_SIZE, FRAME_SIZE, FRAME_SIZE), dtype=np.float32)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        model = onnx_chainer.export(
            QValues(q_function), x, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET
        )
    return clean_graph(model)


def clean_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Flatten for any batch, weights as initializers only, a symbolic batch dimension."""
    graph = model.graph
    # A Reshape to [1, -1] only works at batch 1; Flatten(axis=1) keeps the batch.
    for i, node in enumerate(list(graph.node)):
        if node.op_type == "Reshape":
            shape_source = node.input[1]
            graph.node.remove(node)
            graph.node.insert(i, onnx.helper.make_node("Flatten", [node.input[0]], list(node.output), axis=1))
            for other in list(graph.node):
                if other.op_type == "Constant" and shape_source in other.output:
                    graph.node.remove(other)
    weights = {init.name for init in graph.initializer}
    for value in [v for v in graph.input if v.name in weights]:
        graph.input.remove(value)
    for value in list(graph.input) + list(graph.output):
        value.type.tensor_type.shape.dim[0].ClearField("dim_value")
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del graph.value_info[:]  # shapes traced at batch 1; let inference redo them
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def observation_samples(env_id: str, n: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` real preprocessed frame stacks (float32, scaled) from random play of ``env_id``."""
    env = make_env(env_id, train=False, epsilon=1.0, seed=seed)
    obs, _ = env.reset(seed=seed)
    stacks = []
    for step in range(n * 6):
        obs, _, terminated, truncated, _ = env.step(0)  # RandomizeAction(1.0) picks the action
        if step % 6 == 5:
            stacks.append(scale_observation(obs))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.stack(stacks)


def game_action_count(env_id: str) -> int:
    """How many actions ``env_id`` has (its env made and closed)."""
    env = make_env(env_id, train=False)
    try:
        return int(env.action_space.n)
    finally:
        env.close()


def verify(model_bytes: bytes, q_function: chainer.Link, observations: np.ndarray) -> float:
    """Max abs difference between onnxruntime and Chainer; raises on a mismatch."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in VERIFY_BATCHES:
        x = observations[:batch]
        expected = batch_q_values(q_function, x)
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        diff = float(np.max(np.abs(got - expected)))
        worst = max(worst, diff)
        if got.shape != expected.shape or diff > TOLERANCE or not np.array_equal(got.argmax(1), expected.argmax(1)):
            raise UserError(
                f"verification failed at batch {batch}: onnxruntime differs from Chainer by {diff:.3g} "
                f"(allowed {TOLERANCE}) or in its greedy actions; nothing was written"
            )
    return worst


def convert(
    model_dir: str,
    *,
    out: str | None = None,
    repository: str | None = DEFAULT_REPOSITORY,
    name: str = ConvertOptions.name,
    version: int | None = None,
    # The defaults are the converter's own (ConvertOptions'), written there once.
    max_batch_size: int = ConvertOptions.max_batch_size,
    instance_kind: str = ConvertOptions.instance_kind,
    instance_count: int = ConvertOptions.instance_count,
    max_queue_delay_us: int = ConvertOptions.max_queue_delay_us,
    force: bool = False,
    env_id: str | None = None,
) -> Conversion:
    """Export ``model_dir``'s Q-network, verify it, then write ``out`` or a repository version.

    Nothing is written unless the export matches Chainer. The game is the one the
    agent directory records (``agent_state.json``), else ``env_id``, else the
    default; ``env_id`` contradicting the recorded game is an error. The
    verification plays that game, and the repository's config records it (parameter
    ``env_id``) when it is known: recorded, or given as ``env_id``.
    """
    if out is None:
        check_model_name(name)  # before any work: the name becomes a directory and a config string
    if not os.path.isdir(model_dir):
        raise UserError(f"--model {model_dir}: directory does not exist")
    recorded = recorded_env_id(model_dir)
    game = resolve_env_id(env_id, recorded, os.path.join(model_dir, AGENT_STATE_FILE))
    q_function, n_actions = load_q_function(model_dir)
    remedy = "convert a model trained on this game" if env_id or recorded else "pass --env with the model's game"
    model = f"{os.path.join(model_dir, 'model.npz')}: the model"
    check_action_count(model, n_actions, game, game_action_count(game), remedy)
    config_text = None
    if out is None:
        if not repository:
            raise UserError("give --out FILE or --repository DIR")
        known = recorded or env_id
        config_text = render_config(
            name,
            n_actions,
            max_batch_size=max_batch_size,
            instance_kind=instance_kind,
            instance_count=instance_count,
            max_queue_delay_us=max_queue_delay_us,
            parameters={ENV_ID_KEY: known} if known else None,
        )
        # What would stop the write stops the conversion before the export's minutes:
        # a hand-edited config, a version directory that is no ASCII number.
        existing_versions(os.path.join(repository, name))
        check_config_replaceable(os.path.join(repository, name, CONFIG_FILENAME), config_text, force=force)
    model_bytes = export_onnx(q_function).SerializeToString()
    max_abs_diff = verify(model_bytes, q_function, observation_samples(game))
    if out is not None:
        write_file_atomic(out, model_bytes, force=force, flag="--out")
        return Conversion(n_actions, out, None, max_abs_diff, game, recorded)
    assert repository is not None and config_text is not None
    model_path, config_path = write_model_version(
        repository, name, model_bytes, config_text, version=version, force=force
    )
    return Conversion(n_actions, model_path, config_path, max_abs_diff, game, recorded)
