"""config.pbtxt is a ModelConfig written through protobuf's text format (issue 16 item 5).

The converter once filled a 94-line text template whose comments carried benchmark figures;
now the file is the proto's own text form under a short header, so every field it holds is
one a parser reads back, and the measured figures live in docs/benchmarks.md only.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from helpers import ROOT
from tritonclient.grpc import model_config_pb2

from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.core.contract import DEFAULT_ENV_ID
from atari_trtis_demo.core.model_config import (
    CONFIG_DIGEST_PREFIX,
    CONFIG_HEADER,
    check_config_replaceable,
    config_edited_by_hand,
    render_config,
)
from atari_trtis_demo.core.model_repository import read_repository
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb


def test_the_converter_writes_a_config_that_protobuf_reads_back_field_by_field(
    agents: dict[str, Path], tmp_path: Path
) -> None:
    repo = tmp_path / "trtismodel"
    convert(str(agents["pong"]), repository=str(repo), name="pong", max_batch_size=8, instance_kind="KIND_CPU",
            instance_count=2, max_queue_delay_us=3000, env_id="PongNoFrameskip-v4")  # fmt: skip
    text = (repo / "pong" / "config.pbtxt").read_text()
    body, digest_line = text.rstrip("\n").rsplit("\n", 1)
    assert digest_line.startswith(CONFIG_DIGEST_PREFIX), "the hand-edit digest line stays the last line"

    # Strict parses (no unknown fields allowed): the project's proto subset and Triton's own proto.
    ours = text_format.Parse(body, pb.ModelConfig())
    triton = text_format.Parse(body, model_config_pb2.ModelConfig())
    assert (ours.name, ours.platform, ours.backend, ours.max_batch_size) == ("pong", "onnxruntime_onnx", "", 8)
    assert [(i.name, i.data_type, list(i.dims)) for i in ours.input] == [("input", pb.TYPE_FP32, [4, 84, 84])]
    assert [(o.name, o.data_type, list(o.dims)) for o in ours.output] == [("action", pb.TYPE_FP32, [6])]
    assert [(g.count, g.kind) for g in ours.instance_group] == [(2, pb.ModelInstanceGroup.KIND_CPU)]
    assert ours.dynamic_batching.max_queue_delay_microseconds == 3000
    assert ours.default_model_filename == "model.onnx"
    assert ours.parameters["env_id"].string_value == "PongNoFrameskip-v4"
    assert triton.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert list(triton.output[0].dims) == [6] and triton.dynamic_batching.max_queue_delay_microseconds == 3000

    # Nothing but the header and the proto's own text: re-serializing what was parsed gives the file back,
    # so no comment (and no figure in one) hides between the fields.
    assert body + "\n" == CONFIG_HEADER + text_format.MessageToString(ours, use_short_repeated_primitives=True)
    assert [line for line in body.splitlines() if line.startswith("#")] == CONFIG_HEADER.splitlines()
    assert "docs/benchmarks.md" in CONFIG_HEADER

    (model,) = read_repository(repo)  # what serve reads
    assert (model.name, model.kind, model.versions) == ("pong", "onnxruntime_onnx", [1])


def test_a_zero_queue_delay_keeps_dynamic_batching_on() -> None:
    """proto3 prints no field at its default, so the block itself must still be written for 0 us."""
    config = text_format.Parse(render_config("atari", 4, max_queue_delay_us=0), pb.ModelConfig())
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 0
    off = text_format.Parse(render_config("atari", 4, dynamic_batching=False), pb.ModelConfig())
    assert not off.HasField("dynamic_batching")


def test_the_example_repository_config_is_one_the_converter_may_replace() -> None:
    """trtismodel/atari/config.pbtxt is the renderer's own output, signed: the README's convert into trtismodel/
    replaces it without --force (a template-era example counted as edited by hand)."""
    example = ROOT / "trtismodel" / "atari" / "config.pbtxt"
    assert not config_edited_by_hand(example.read_text(), render_config("atari", 4))
    new_text = render_config("atari", 6, parameters={"env_id": DEFAULT_ENV_ID})
    check_config_replaceable(str(example), new_text, force=False)  # raises UserError if it counts as hand-edited
