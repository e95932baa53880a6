"""The end of the benchmarks' player processes (``python -c``): src/app.py's main with its play loop measured.

Each benchmark writes its own start of the child's code (which tree it imports, what it waits for
before play) ending in a ``measured(self, play=pl.PlayLoop.play)`` header and ``cpu()``; this tail
makes the loop print the CPU it spent in play, between markers the benchmark reads (:data:`PLAY_LINE`),
and runs the player on ``sys.argv[FIRST_FLAG:]``.
"""

from __future__ import annotations

import re

PLAY_LINE = re.compile(r"^bench: client CPU in play ([0-9.]+) s", re.MULTILINE)


def measured_play(first_flag: int) -> str:
    """The child's code after its ``measured`` header: play measured, then ``remote_main(sys.argv[first_flag:])``."""
    return (
        "    start = cpu()\n"
        "    try:\n"
        "        play(self)\n"
        "    finally:\n"
        '        print(f"bench: client CPU in play {cpu() - start:.3f} s", flush=True)\n'
        "pl.PlayLoop.play = measured\n"
        f"sys.exit(remote_main(sys.argv[{first_flag}:]))\n"
    )
