"""The converter keeps a hand-edited config.pbtxt, and version directories with non-ASCII digits are one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import CONVERTER, SERVE, free_ports, one_error_line, run_command, tree_digest

from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.model_config import CONFIG_DIGEST_PREFIX, render_config
from atari_trtis_demo.core.model_repository import existing_versions, read_repository

# Each is a digit to str.isdigit(): fullwidth one, Arabic-indic three, superscript two
# (int() reads the first two as 1 and 3, and refuses the last).
NON_ASCII_DIGITS = ["\uff11", "\u0663", "\u00b2"]


def test_a_config_edited_by_hand_is_kept_unless_forced(agents: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    convert(str(agents["breakout"]), repository=str(repo), max_batch_size=8)
    config = repo / "atari" / "config.pbtxt"
    assert config.read_text().splitlines()[-1].startswith(CONFIG_DIGEST_PREFIX)
    # Untouched, the converter's own config is replaced freely, also with other settings.
    convert(str(agents["breakout"]), repository=str(repo), max_batch_size=16)
    assert "max_batch_size: 16" in config.read_text()

    config.write_text(
        config.read_text().replace("max_queue_delay_microseconds: 100", "max_queue_delay_microseconds: 3000")
    )
    before = tree_digest(repo)
    result = run_command(
        CONVERTER, "--model", str(agents["breakout"]), "--repository", str(repo), "--max-batch-size", "16"
    )
    line = one_error_line(result, str(config), "by hand", "--force")
    assert "verified" not in result.stdout, "refused before the export, not after it"
    assert tree_digest(repo) == before, f"nothing written: {line}"

    # A config written by hand from scratch (no digest line) is kept too.
    config.write_text(render_config("atari", 4, max_batch_size=4, instance_kind="KIND_CPU"))
    with pytest.raises(UserError, match="by hand.*--force"):
        convert(str(agents["breakout"]), repository=str(repo), max_batch_size=16)
    # One that says exactly what the converter would write (the repository's example, older
    # converters) is no hand edit.
    config.write_text(render_config("atari", 4, max_batch_size=16))
    convert(str(agents["breakout"]), repository=str(repo), max_batch_size=16)

    config.write_text(config.read_text() + "# my note\n")
    forced = convert(str(agents["breakout"]), repository=str(repo), max_batch_size=16, force=True)
    assert "# my note" not in config.read_text() and forced.config_path == str(config)
    assert existing_versions(str(repo / "atari")) == [1, 2, 3, 4]


@pytest.mark.parametrize("name", NON_ASCII_DIGITS)
def test_a_version_directory_named_with_non_ascii_digits_is_one_line(name: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model = repo / "atari"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(b"onnx")
    (model / "config.pbtxt").write_text(render_config("atari", 4, instance_kind="KIND_CPU"))
    (model / name).mkdir()
    (model / name / "model.onnx").write_bytes(b"onnx")

    with pytest.raises(UserError, match="not an ASCII number") as err:
        read_repository(repo)
    assert str(model / name) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="not an ASCII number"):
        existing_versions(str(model))

    # serve reads the repository through read_repository: one line, before Triton starts.
    http, grpc_port, metrics = map(str, free_ports(3))
    ports = ["--http-port", http, "--grpc-port", grpc_port, "--metrics-port", metrics]
    served = run_command(SERVE, "--model-repository", str(repo), *ports, timeout=120)
    one_error_line(served, name, "not an ASCII number")

    # Without the stray directory the repository serves as before: the check takes only it.
    shutil.rmtree(model / name)
    assert [m.versions for m in read_repository(repo)] == [[1]]


def test_the_converter_names_a_non_ascii_version_directory_before_it_converts(
    agents: dict[str, Path], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "atari" / "\u0663").mkdir(parents=True)
    result = run_command(CONVERTER, "--model", str(agents["breakout"]), "--repository", str(repo))
    one_error_line(result, "\u0663", "not an ASCII number")
    assert "verified" not in result.stdout
    assert sorted(p.name for p in (repo / "atari").iterdir()) == ["\u0663"], "nothing written"
