"""The keys every screen answers (the pygame window's and the browser page's): pause and quit."""

from __future__ import annotations

import time

QUIT, PAUSE = "quit", "pause"  # what the player asked for (:meth:`Controls.commands`)


class Controls:
    """The keys every screen answers, the window's and the page's alike: P or Space pauses
    (the paused time is kept out of play's), Esc or Q ends play."""

    paused_seconds: float = 0.0

    def commands(self) -> list[str]:
        """What was asked since the last call: :data:`QUIT`, :data:`PAUSE` (others are ignored)."""
        raise NotImplementedError

    def wait_while_paused(self) -> bool:
        """Show that play is paused until resumed; False when the player quit meanwhile."""
        raise NotImplementedError

    def player_quit(self) -> bool:
        """Handle the keys pressed since the last call; True when the player asked to end play.

        P or Space pauses right here until resumed (the time adds to ``paused_seconds``).
        """
        for command in self.commands():
            if command == PAUSE:
                pause_start = time.perf_counter()
                resumed = self.wait_while_paused()
                self.paused_seconds += time.perf_counter() - pause_start
                if not resumed:
                    return True
            elif command == QUIT:
                return True
        return False
