"""Progress while the bench runs: tqdm when importable, else a plain stderr line."""

from __future__ import annotations

import sys
from typing import Any, Optional


class Progress:
    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled
        self._bar: Any = None
        self._tty = sys.stderr.isatty()
        self._width = 0
        if not enabled:
            return
        try:
            if not self._tty:
                raise ImportError("a bar needs a terminal")
            import tqdm as _tqdm

            # No monitor thread: the harness forks, and a thread in the parent
            # is one more thing to go wrong in a child.
            _tqdm.tqdm.monitor_interval = 0
            self._bar = _tqdm.tqdm(total=total, unit="run", file=sys.stderr, leave=False,
                                   dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
        except Exception:
            self._bar = None

    def describe(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=True)
        elif self._tty:
            line = "[%d/%d] %s" % (self.done + 1, self.total, text)
            sys.stderr.write("\r" + line.ljust(self._width))
            self._width = max(self._width, len(line))
            sys.stderr.flush()

    def advance(self, result: Optional[str] = None, text: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            if result:
                self._bar.set_postfix_str(result, refresh=False)
        elif not self._tty:
            sys.stderr.write("[%d/%d] %s%s\n" % (self.done, self.total, text, (": " + result) if result else ""))
            sys.stderr.flush()

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            if self._tty and self._width:
                sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._tty and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()
