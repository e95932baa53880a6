"""``--record FILE.mp4`` works after ./setup.sh (imageio-ffmpeg) and plays back at the Atari's own pace."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import pytest
from helpers import run_standalone

from atari_trtis_demo.play.screen import RECORD_EVERY
from atari_trtis_demo.train.agent import make_agent

REAL_TIME_FPS = 15.0  # agent steps per second at 60 Atari frames/s
STEPS = 40


def test_mp4_recording_is_real_time(tmp_path: Path) -> None:
    pytest.importorskip("imageio_ffmpeg", reason="installed by ./setup.sh (requirements_client.txt)")
    make_agent(4, env_id="BreakoutNoFrameskip-v4").save(str(tmp_path / "agent"))
    video = tmp_path / "x.mp4"
    result = run_standalone(tmp_path / "agent", "--fps", "0", "--max-steps", str(STEPS), "--record", str(video))
    assert result.returncode == 0, result.stderr
    with imageio.get_reader(str(video)) as reader:  # imageio-ffmpeg's reader
        meta = reader.get_meta_data()
        frames = list(reader.iter_data())  # (its len() is inf: ffmpeg does not say the count up front)
    assert len(frames) == STEPS // RECORD_EVERY
    assert meta["fps"] == pytest.approx(REAL_TIME_FPS / RECORD_EVERY)
    real_time = STEPS / REAL_TIME_FPS  # 40 steps of 4 frames at 60 frames/s: 2.67 s
    assert len(frames) / meta["fps"] == pytest.approx(real_time), "the video lasts as long as the game did"
    assert meta["duration"] == pytest.approx(real_time, abs=0.05)
    assert frames[0].ndim == 3 and frames[0].shape[2] == 3 and frames[0].shape[0] >= 630
