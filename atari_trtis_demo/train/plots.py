"""Learning curve PNG from a ChainerRL ``scores.txt``."""

from __future__ import annotations

import csv
import json
import os

from atari_trtis_demo.core.atomic import replacing_file
from atari_trtis_demo.core.cli_args import PLOT_MODULES, ArgumentParser, needs_server_install, run_cli
from atari_trtis_demo.core.errors import UserError


def read_scores(path: str) -> dict[str, list[float]]:
    """Columns of a ChainerRL ``scores.txt`` (tab-separated, header first) as floats."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from e
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(float("nan"))
    return columns


def plot_learning_curve(scores_path: str, png_path: str, title: str | None = None) -> None:
    """Evaluation score (mean, with min-max band) against training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = read_scores(scores_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if scores.get("steps"):
        steps = scores["steps"]
        ax.fill_between(steps, scores["min"], scores["max"], alpha=0.2, label="min-max")
        ax.plot(steps, scores["mean"], marker="o", markersize=3, label="mean")
        ax.plot(steps, scores["median"], linestyle="--", linewidth=1, label="median")
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training steps (agent steps = 4 frames)")
    ax.set_ylabel("evaluation score per game")
    ax.set_title(title or _run_title(scores_path))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with replacing_file(png_path, suffix=".tmp.png") as tmp:  # the suffix tells matplotlib the format
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def _run_title(scores_path: str) -> str:
    """``<env> <run directory name>``, the env read from the run's args.txt when present."""
    run_dir = os.path.dirname(os.path.abspath(scores_path))
    try:
        with open(os.path.join(run_dir, "args.txt")) as f:
            env = json.load(f).get("env", "")
    except (OSError, ValueError, AttributeError):
        env = ""
    return f"{env} {os.path.basename(run_dir)}".strip()


def main() -> None:
    # The project's parser: one-line errors, and "usage: python -m atari_trtis_demo.plots" as it is run.
    parser = ArgumentParser(description="Draw the learning curve of a training run.")
    parser.add_argument("scores", help="scores.txt of a run directory")
    parser.add_argument("--out", help="PNG to write (default: learning_curve.png beside scores.txt)")
    args = parser.parse_args()
    out = args.out or os.path.join(os.path.dirname(args.scores), "learning_curve.png")
    plot_learning_curve(args.scores, out)
    print(out)


if __name__ == "__main__":
    run_cli(needs_server_install("python -m atari_trtis_demo.train.plots", main, PLOT_MODULES))
