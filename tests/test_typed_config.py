"""One typed config per command (issue 16 item 4): the play commands' flags are their dataclasses' fields.

Each flag's default, range check and help are written once, on its field; the parsers are
built from the fields and the parsed values become the dataclass without being copied
field by field, so a flag the parser knows always reaches the config.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from atari_trtis_demo.core.typed_flags import flag_fields, from_args
from atari_trtis_demo.play.play_cli import (
    REMOTE_ONLY,
    RemoteOptions,
    StandaloneOptions,
    play_config,
    remote_parser,
    standalone_parser,
)
from atari_trtis_demo.play.play_config import REQUEST_TIMEOUT_SECONDS, PlayConfig

PARSERS = {"remote": remote_parser, "standalone": standalone_parser}


def options_of(parser) -> dict[str, object]:  # dest -> action, help flags left out
    return {a.dest: a for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize("command", PARSERS)
def test_every_flag_has_help_and_help_shows_the_defaults(command: str) -> None:
    parser = PARSERS[command]()
    for action in options_of(parser).values():
        assert action.help, f"{command}: {action.option_strings} has no help"
    text = " ".join(parser.format_help().split())
    # Defaults that are values (not None, not a switch's False) are shown in --help.
    for spelled in ("(default: 3.0)", "(default: 0.05)", "(default: 0)", "(default: 1)"):
        assert spelled in text, f"{command}: {spelled} missing from --help"


def test_the_2019_spellings_are_kept() -> None:
    remote = {s for a in remote_parser()._actions for s in a.option_strings}
    standalone = {s for a in standalone_parser()._actions for s in a.option_strings}
    assert {"--host", "--port", "--model", "--rendering_scale", "--sync"} <= remote
    assert {"--modelpath", "--rendering_scale", "--sync", "--async"} <= standalone
    assert not {"--reconnect", "--timeout", "--host"} & standalone, "remote-only flags stay off the local player"


def test_each_default_is_the_fields_own() -> None:
    """Nothing given: the config is PlayConfig's defaults, but for what the command resolves (game, deadline)."""
    remote = play_config(remote_parser().parse_args([]))
    assert remote == dataclasses.replace(PlayConfig(), env_id=None, request_timeout=REQUEST_TIMEOUT_SECONDS)
    assert from_args(RemoteOptions, remote_parser().parse_args([])) == RemoteOptions()
    local_args = standalone_parser().parse_args(["--modelpath", "agent"])
    assert play_config(local_args) == dataclasses.replace(PlayConfig(), env_id=None, sync=True)
    assert from_args(StandaloneOptions, local_args) == StandaloneOptions(modelpath="agent")


def test_every_flag_reaches_the_config(tmp_path: Path) -> None:
    """A value other than the default for each of PlayConfig's flags arrives in the PlayConfig."""
    given = {
        "env_id": ("--env", "PongNoFrameskip-v4"),
        "episodes": ("--episodes", 3),
        "max_steps": ("--max-steps", 7),
        "sync": ("--sync", True),
        "headless": ("--headless", True),
        "fps": ("--fps", 0.0),
        "rendering_scale": ("--rendering_scale", 1.5),
        "seed": ("--seed", 9),
        "epsilon": ("--epsilon", 0.0),
        "record": ("--record", str(tmp_path / "play.gif")),
        "screenshot": ("--screenshot", str(tmp_path / "last.png")),
        "fire_on_life_loss": ("--fire-on-life-loss", True),
        "reconnect": ("--reconnect", 0.0),
        "request_timeout": ("--timeout", 1.5),
        "game_over_seconds": ("--game-over-seconds", 0.0),
        "json": ("--json", str(tmp_path / "stats.json")),
        "web": ("--web", "127.0.0.1:0"),
    }
    assert set(given) == {f.name for f in flag_fields(PlayConfig)}, "a new PlayConfig flag needs a line here"
    argv = []
    for spelled, value in given.values():
        argv += [spelled] if value is True else [spelled, str(value)]
    config = play_config(remote_parser().parse_args(argv))
    assert {name: getattr(config, name) for name in given} == {name: value for name, (_, value) in given.items()}

    local_argv = ["--modelpath", "agent", "--async"]
    for name, (spelled, value) in given.items():
        if name not in REMOTE_ONLY:
            local_argv += [spelled] if value is True else [spelled, str(value)]
    local = play_config(standalone_parser().parse_args(local_argv))
    assert local.sync is False and local.episodes == 3 and local.json == str(tmp_path / "stats.json")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["--fps", "-1"], "--fps"), (["--rendering_scale", "100"], "--rendering_scale"), (["--games", "0"], "--games")],
)
def test_range_checks_come_with_the_field(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        remote_parser().parse_args(argv)
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: argument {flag}")


def test_serve_flags_are_start_servers_keywords_with_its_defaults() -> None:
    """serve's typed config feeds start_server by name: each setting is one of its keywords, same default."""
    import inspect

    from atari_trtis_demo.serving.serve import build_parser, start_server
    from atari_trtis_demo.serving.serve_config import ServeOptions

    parser = build_parser()
    assert all(action.help for action in options_of(parser).values())
    options = from_args(ServeOptions, parser.parse_args(["--model-repository", "trtismodel"]))
    assert options == ServeOptions(model_repository="trtismodel")
    keywords = inspect.signature(start_server).parameters
    settings = options.server_settings()
    assert settings and {name: keywords[name].default for name in settings} == settings
    assert "(default: 8001)" in " ".join(parser.format_help().split())


def test_convert_flags_are_converts_keywords_with_its_defaults() -> None:
    """The converter's typed config feeds onnx_export.convert by name, with the same defaults as render_config."""
    import inspect

    from atari_trtis_demo.convert.convert_cli import build_parser
    from atari_trtis_demo.convert.convert_config import ConvertOptions
    from atari_trtis_demo.convert.onnx_export import convert
    from atari_trtis_demo.core.model_config import render_config

    parser = build_parser()
    assert all(action.help for action in options_of(parser).values())
    options = from_args(ConvertOptions, parser.parse_args(["--model", "agent", "--env", "PongNoFrameskip-v4"]))
    assert options == ConvertOptions(model="agent", env_id="PongNoFrameskip-v4")
    settings = options.convert_settings()
    keywords = inspect.signature(convert).parameters
    assert {name: keywords[name].default for name in settings if name != "env_id"} == {
        name: value for name, value in settings.items() if name != "env_id"
    }
    rendered = inspect.signature(render_config).parameters
    shared = ("max_batch_size", "instance_kind", "instance_count", "max_queue_delay_us")
    assert {name: rendered[name].default for name in shared} == {name: settings[name] for name in shared}
    assert "{KIND_GPU,KIND_CPU}" in parser.format_help(), "choices still show in --help"


def test_train_flags_keep_chainerrls_spellings_and_defaults() -> None:
    """train_dqn.py's typed config: ChainerRL's reproduction flags and defaults, each with help."""
    from atari_trtis_demo.train.train_cli import build_parser
    from atari_trtis_demo.train.train_config import TrainOptions

    parser = build_parser()
    assert all(action.help for action in options_of(parser).values())
    spelled = {s for a in parser._actions for s in a.option_strings}
    assert {"--env", "--outdir", "--seed", "--gpu", "--demo", "--load", "--steps", "--eval-interval"} <= spelled
    options = from_args(TrainOptions, parser.parse_args(["--gpu", "-1", "--steps", "100"]))
    assert options == TrainOptions(gpu=-1, steps=100)
    assert (TrainOptions.steps, TrainOptions.replay_start_size, TrainOptions.eval_n_steps) == (5 * 10**7, 50000, 125000)
    # args.txt in a run directory is vars() of the options: the flags' names, in the order argparse had them.
    assert list(vars(options)) == [a.dest for a in parser._actions if a.dest != "help"]


# --- every default --help shows is the one the command uses ---------------------------------------------------------

# Defaults --help describes in words, not as a value: (the words it starts with, the value the command then has).
DESCRIBED = {
    "--env": ("the ", None),  # the model's own game (resolved from the model), else DEFAULT_ENV_ID: see below
    "--load": ("a new agent", None),
    "--version": ("the next free one", None),
    "--sync": ("asynchronous inference", False),
    "--expose-http": ("they stay on 127.0.0.1", False),
}


def used_values(command: str) -> dict[str, object]:
    """For each flag of ``command`` (by its first spelling): the value the command uses when the flag is absent,
    as its code resolves it (configs built from an empty command line, the entry points' keyword defaults, the
    play loop's episode cap and game-over time)."""
    import inspect

    from atari_trtis_demo.play.play_config import GAME_OVER_SECONDS

    if command == "train":
        from atari_trtis_demo.train.train_cli import build_parser
        from atari_trtis_demo.train.train_config import TrainOptions

        parser, argv, config = build_parser(), [], TrainOptions
    elif command == "convert":
        from atari_trtis_demo.convert.convert_cli import build_parser
        from atari_trtis_demo.convert.convert_config import ConvertOptions

        parser, argv, config = build_parser(), [], ConvertOptions
    elif command == "serve":
        from atari_trtis_demo.serving.serve import build_parser
        from atari_trtis_demo.serving.serve_config import ServeOptions

        parser, argv, config = build_parser(), ["--model-repository", "trtismodel"], ServeOptions
    else:
        parser = remote_parser() if command == "play" else standalone_parser()
        argv, config = ([] if command == "play" else ["--modelpath", "agent"]), None
    args = parser.parse_args(argv)
    values = vars(from_args(config, args)) if config else {**vars(args), **vars(play_config(args))}
    if command == "convert":  # the converter hands its keywords to onnx_export.convert, which resolves the rest
        from atari_trtis_demo.convert.onnx_export import convert

        values["repository"] = inspect.signature(convert).parameters["repository"].default
    if command in ("play", "play-local"):
        values["max_steps"] = play_config(args).episode_cap  # None: the evaluation cap
        values["game_over_seconds"] = GAME_OVER_SECONDS  # None: this long in a window (0 where no key can come)
    return {a.option_strings[0]: values[a.dest] for a in parser._actions if a.option_strings and a.dest != "help"}


def shown_default_matches(shown: str, used: object) -> bool:
    """``shown`` (what --help says after "default: ") starts with ``used``, as a number, a word or "none"."""
    value = re.split(r"[;,]|\s", shown, maxsplit=1)[0]
    if used is None:
        return value == "none"
    if isinstance(used, int | float) and not isinstance(used, bool):
        try:
            return float(value.replace(",", "")) == float(used)
        except ValueError:
            return False
    return value == str(used)


@pytest.mark.parametrize("command", ["train", "convert", "serve", "play", "play-local"])
def test_every_default_help_shows_is_the_one_used(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each "(default: X)" of ``--help`` against what the command does without the flag: --max-steps said
    "none" while every episode was capped at 4,500 steps."""
    from helpers import option_helps

    from atari_trtis_demo.core.contract import DEFAULT_ENV_ID

    monkeypatch.setenv("COLUMNS", "200")
    parser = {"play": remote_parser, "play-local": standalone_parser}.get(command)
    if parser is None:
        module = {"train": "train.train_cli", "convert": "convert.convert_cli", "serve": "serving.serve"}[command]
        parser = __import__(f"atari_trtis_demo.{module}", fromlist=["build_parser"]).build_parser
    required = {a.option_strings[0] for a in parser()._actions if a.required}  # given to build the config
    helps, used = option_helps(parser().format_help()), used_values(command)
    checked = []
    for flag, text in helps.items():
        if flag == "-h" or flag in required:
            continue
        match = re.search(r"\(default: (.*)\)$", text)
        if match is None:
            # A flag that has a value when absent says it (switches and unset flags may stay silent).
            assert used[flag] is None or isinstance(used[flag], bool), (command, flag, used[flag], text)
            continue
        shown = match.group(1)
        if flag in DESCRIBED and not shown_default_matches(shown, used[flag]):
            words, value = DESCRIBED[flag]
            assert shown.startswith(words) and used[flag] == value, (command, flag, shown, used[flag])
            if flag == "--env":  # the fallback it names is the one the commands fall back to
                assert DEFAULT_ENV_ID in shown, shown
        else:
            assert shown_default_matches(shown, used[flag]), (
                f"{command} {flag}: --help says {shown!r}, uses {used[flag]!r}"
            )
        checked.append(flag)
    assert len(checked) >= 4, (command, checked)
