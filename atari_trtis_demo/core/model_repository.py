"""A Triton model repository, ``<repo>/<name>/config.pbtxt`` + ``<version>/model.onnx``: written and read.

The converter writes it (:func:`write_model_version`, with the config from
:func:`atari_trtis_demo.core.model_config.render_config`), the server reads it
(:func:`read_repository`). Writes are atomic
(:mod:`atari_trtis_demo.core.atomic`): a failed conversion leaves the repository as it
was, and a config never points to a version that is not fully written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from atari_trtis_demo.core import atomic
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.model_config import (
    DEFAULT_FILENAMES,
    MODEL_FILENAME,
    check_config_replaceable,
    check_model_name,
    sign_config,
)
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb

CONFIG_FILENAME = "config.pbtxt"
# A version directory: ASCII digits only. str.isdigit() also takes "１" (fullwidth),
# "٣" (Arabic-indic) or "²", which int() reads as another number or refuses.
_VERSION_NAME = re.compile(r"[0-9]+")


def version_dirs(model_dir: str | Path, flag: str = "--model-repository") -> list[int]:
    """Version numbers of the version directories under ``model_dir``, sorted.

    A directory named with digits that are not ASCII (``"１"``, ``"٣"``, ``"²"``) would be
    taken for a version by ``str.isdigit`` and break ``int``, or alias another version:
    :class:`UserError` naming it. Other names (``config.pbtxt``, hidden staging) are no versions.
    """
    versions = []
    for entry in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, entry)
        if not os.path.isdir(path):
            continue
        if _VERSION_NAME.fullmatch(entry):
            versions.append(int(entry))
        elif entry.isdigit() or entry.isnumeric():
            raise UserError(
                f"{flag} {path}: version directory {entry!r} is not an ASCII number (name versions 1, 2, ...)"
            )
    return sorted(versions)


def existing_versions(model_dir: str) -> list[int]:
    """Version numbers already present under ``<repo>/<name>/``."""
    if not os.path.isdir(model_dir):
        return []
    return version_dirs(model_dir, "--repository")


def write_file_atomic(path: str, data: bytes, *, force: bool, flag: str) -> None:
    """Write ``path`` via a temporary sibling and a rename; refuse to replace unless ``force``."""
    if os.path.exists(path) and not force:
        raise UserError(f"{flag} {path}: already exists (use --force to replace it)")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic.write_bytes(path, data)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror})") from e


def write_model_version(
    repository: str,
    name: str,
    model_bytes: bytes,
    config_text: str,
    *,
    version: int | None = None,
    force: bool = False,
) -> tuple[str, str]:
    """Put ``model_bytes`` at ``<repository>/<name>/<version>/model.onnx`` and write the config.

    The version directory is assembled under a temporary name and renamed into place,
    then the config is replaced atomically: at no moment does the config name a
    model file that is not whole. Returns (model path, config path).
    """
    check_model_name(name)  # never a path outside the repository, nor a config Triton cannot parse
    model_dir = os.path.join(repository, name)
    versions = existing_versions(model_dir)
    if version is None:
        version = (versions[-1] + 1) if versions else 1
    if version < 1:
        raise UserError(f"--version must be at least 1, got {version}")
    version_dir = os.path.join(model_dir, str(version))
    if os.path.exists(version_dir) and not force:
        raise UserError(f"--version {version}: {version_dir} already exists (use --force to replace it)")
    created_model_dir = not os.path.isdir(model_dir)
    config_path = os.path.join(model_dir, CONFIG_FILENAME)
    check_config_replaceable(config_path, config_text, force=force)  # before anything is written
    # hidden (".1.tmp-<tag>"): a temporary name must not start with the version's digits,
    # where Triton or existing_versions could take it for a version.
    swap = atomic.DirectorySwap(version_dir, hidden=True)
    try:
        os.makedirs(swap.staging)
    except OSError as e:
        raise UserError(f"--repository {repository}: cannot write ({e.strerror})") from e
    try:
        with swap:
            with open(os.path.join(swap.staging, MODEL_FILENAME), "wb") as f:
                f.write(model_bytes)
            swap.commit()
            try:
                write_file_atomic(config_path, sign_config(config_text).encode(), force=True, flag="--repository")
            except UserError:
                swap.rollback()  # put the repository back as it was: no model without its config
                raise
    except OSError as e:
        raise UserError(f"--repository {repository}: cannot write ({e.strerror})") from e
    finally:
        if created_model_dir and os.path.isdir(model_dir) and not os.listdir(model_dir):
            os.rmdir(model_dir)
    return os.path.join(version_dir, MODEL_FILENAME), config_path


@dataclass
class RepositoryModel:
    """One model of a repository as the server reads it: its config and version numbers."""

    name: str
    config_path: Path
    config: pb.ModelConfig
    versions: list[int] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.config.platform or self.config.backend


def read_repository(repository: str | Path) -> list[RepositoryModel]:
    """Parse and check every model of a repository; one-line errors naming the file at fault."""
    root = Path(repository)
    if not root.is_dir():
        raise UserError(f"--model-repository {root}: directory does not exist")
    models = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_path = model_dir / CONFIG_FILENAME
        if not config_path.is_file():
            raise UserError(f"{config_path}: missing (every model directory needs its {CONFIG_FILENAME})")
        try:
            config = text_format.Parse(config_path.read_text(), pb.ModelConfig(), allow_unknown_field=True)
        except (text_format.ParseError, UnicodeDecodeError) as e:
            raise UserError(f"{config_path}: malformed config ({str(e).splitlines()[0]})") from e
        if config.name and config.name != model_dir.name:
            raise UserError(f"{config_path}: name '{config.name}' differs from its directory '{model_dir.name}'")
        config.name = model_dir.name
        model = RepositoryModel(model_dir.name, config_path, config)
        if model.kind not in DEFAULT_FILENAMES:
            raise UserError(f"{config_path}: platform/backend '{model.kind}' is not one this server can run")
        filename = config.default_model_filename or DEFAULT_FILENAMES[model.kind]
        model.versions = version_dirs(model_dir)
        if not model.versions:
            raise UserError(
                f"{model_dir / '1' / filename}: missing (no version directory in {model_dir}; convert a model "
                f"into it with onnx_converter_src/converter.py --repository {model_dir.parent}, or serve the one "
                "./demo.sh made: demo_output/<game>/trtismodel)"
            )
        for version in model.versions:
            if not (model_dir / str(version) / filename).is_file():
                raise UserError(f"{model_dir / str(version) / filename}: model file missing")
        models.append(model)
    if not models:
        raise UserError(f"--model-repository {root}: no model in it (expected <name>/{CONFIG_FILENAME})")
    return models
