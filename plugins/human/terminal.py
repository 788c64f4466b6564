"""Reading keys at a terminal while the program goes on, and putting the terminal back.

:class:`KeyReader` switches the terminal to cbreak mode (keys arrive one by one,
unechoed; Ctrl-C still interrupts), and a background thread waits on the terminal
with ``select`` and hands each key, timestamped the moment it is read, to a callback
and a queue. Nothing in the main thread ever blocks on the keyboard. The terminal's
settings are restored on exit, on an exception, on SIGTERM and SIGHUP (a closed
terminal), and at interpreter exit. A stdin that is not a terminal is refused with
:class:`TerminalError` at once, instead of hanging on a pipe.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from textenv.cli import not_a_terminal

if TYPE_CHECKING:
    from typing_extensions import Self

ESCAPE_KEYS = {
    b"\x1b[A": "up", b"\x1bOA": "up", b"\x1b[B": "down", b"\x1bOB": "down",
    b"\x1b[C": "right", b"\x1bOC": "right", b"\x1b[D": "left", b"\x1bOD": "left",
}
NAMED_BYTES = {b" ": "space", b"\r": "enter", b"\n": "enter", b"\x1b": "esc", b"\x7f": "backspace", b"\t": "tab"}


class TerminalError(RuntimeError):
    """Keys cannot be read here (stdin is not a terminal); the message says what to do."""


@dataclass(frozen=True)
class Key:
    """One key as read: its name (``"up"``, ``"g"``, ``"3"``, ``"space"``, ``"hangup"``) and wall time."""

    name: str
    at: float


def split_keys(data: bytes) -> list[str]:
    """Name the keys in a chunk read from the terminal (arrow keys are 3-byte escapes).

    Example:
        >>> split_keys(b"g\\x1b[A3 ")
        ['g', 'up', '3', 'space']
    """
    names, i = [], 0
    while i < len(data):
        three = data[i : i + 3]
        if three in ESCAPE_KEYS:
            names.append(ESCAPE_KEYS[three])
            i += 3
            continue
        if data[i : i + 1] == b"\x1b" and data[i + 1 : i + 2] in (b"[", b"O") and i + 2 < len(data):
            names.append("unknown-escape")  # another escape sequence (F-keys, Home ...): skip it whole
            i += 3
            while i < len(data) and not (0x40 <= data[i] <= 0x7E) and data[i : i + 1] != b"\x1b":
                i += 1
            i += 1 if i < len(data) and data[i : i + 1] != b"\x1b" else 0
            continue
        one = data[i : i + 1]
        if one in NAMED_BYTES:
            names.append(NAMED_BYTES[one])
        elif 0x20 < data[i] < 0x7F:
            names.append(one.decode("ascii"))
        else:
            names.append(f"0x{data[i]:02x}")
        i += 1
    return names


def check_terminal(tty_path: str | None = None) -> None:
    """Make sure keys can be read, without changing the terminal: a cheap check to run before slow work.

    Args:
        tty_path: the terminal device that will be used; stdin when None.

    Raises:
        TerminalError: it is not a terminal (or cannot be opened), naming it.
    """
    if tty_path is None:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):  # stdin closed, or replaced by an object without a file
            raise TerminalError(not_a_terminal("stdin")) from None
        if not os.isatty(fd):
            raise TerminalError(not_a_terminal("stdin"))
        return
    try:
        fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY)
    except OSError as exc:
        raise TerminalError(f"{tty_path}: cannot open the terminal: {exc.strerror}") from None
    try:
        if not os.isatty(fd):
            raise TerminalError(not_a_terminal(tty_path))
    finally:
        os.close(fd)


class KeyReader:
    """Keys from a terminal, read by a background thread, each timestamped as it arrives.

    Example::

        with KeyReader(on_key=print) as keys:   # stdin must be a terminal
            ...                                 # generate, display; keys arrive meanwhile
            for key in keys.drain():
                ...

    Args:
        fd: the terminal's file descriptor (stdin by default).
        on_key: called in the reader thread with each :class:`Key` as soon as it is read
            (commit it there: a label is safe before the next key is read).
        tty_path: open this terminal device instead of using ``fd`` (for example the
            slave side of a pseudo-terminal); output then goes to it too.
    """

    def __init__(self, fd: int | None = None, *, on_key: Callable[[Key], None] | None = None,
                 tty_path: str | None = None):
        self._owned_fd = None
        if tty_path is not None:
            try:
                self._owned_fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY)
            except OSError as exc:
                raise TerminalError(f"{tty_path}: cannot open the terminal: {exc.strerror}") from None
            fd = self._owned_fd
        self.fd = sys.stdin.fileno() if fd is None else fd
        if not os.isatty(self.fd):
            self._close_owned()
            raise TerminalError(not_a_terminal(tty_path or "stdin"))
        self.on_key = on_key
        self.keys: queue.Queue[Key] = queue.Queue()
        self.hung_up = threading.Event()
        self._saved: list[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1
        self._previous_handlers: dict[int, Any] = {}

    # ---------------------------------------------------------------- lifetime

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Put the terminal in cbreak mode and start the reader thread."""
        self._saved = termios.tcgetattr(self.fd)
        atexit.register(self.restore)
        self._install_signal_handlers()
        tty.setcbreak(self.fd, termios.TCSANOW)  # one key at a time, no echo; Ctrl-C still signals
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._read_loop, name="textenv-keys", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the reader thread and restore the terminal (safe to call twice)."""
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")
            self._thread.join(timeout=2)
            self._thread = None
            for fd in (self._stop_r, self._stop_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.restore()
        for signum, handler in self._previous_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)
        self._previous_handlers.clear()
        atexit.unregister(self.restore)
        self._close_owned()

    def restore(self) -> None:
        """Put back the terminal settings found at :meth:`start`."""
        if self._saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def _close_owned(self) -> None:
        if self._owned_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._owned_fd)
            self._owned_fd = None

    def _install_signal_handlers(self) -> None:
        """On SIGTERM or SIGHUP: restore the terminal, then exit as the signal would."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still restores

        def handler(signum: int, frame: Any) -> None:
            self.restore()
            previous = self._previous_handlers.get(signum)
            if callable(previous):
                previous(signum, frame)
            raise SystemExit(128 + signum)

        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._previous_handlers[signum] = signal.signal(signum, handler)

    # ----------------------------------------------------------------- reading

    def _read_loop(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.fd, self._stop_r], [], [])
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.fd, 64)
            except OSError:
                data = b""
            at = time.time()
            if not data:  # the terminal was closed: no more keys will come
                self._emit(Key("hangup", at))
                self.hung_up.set()
                return
            for name in split_keys(data):
                self._emit(Key(name, at))

    def _emit(self, key: Key) -> None:
        if self.on_key is not None:
            self.on_key(key)
        self.keys.put(key)

    def drain(self) -> list[Key]:
        """Every key read since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self.keys.get_nowait())
            except queue.Empty:
                return out

    def output(self) -> TextIO:
        """Where to write the display: the opened terminal device, or stdout."""
        if self._owned_fd is not None:
            return os.fdopen(os.dup(self._owned_fd), "w", encoding="utf-8", errors="replace", buffering=1)
        return sys.stdout
