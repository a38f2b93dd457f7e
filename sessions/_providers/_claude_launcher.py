"""The Claude CLI's launcher: the CLI and everything under it die with their owner.

`LauncherTransport` starts this file as a script (``python -I -S _claude_launcher.py
OWNER_PID OWNER_FD GRACE CLI ARGS...``) in place of the CLI. It uses the standard
library only, so it starts in a few milliseconds, and it does four things:

- it makes itself a **child subreaper** (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``):
  every process below it that loses its parent is re-parented to it, not to init,
  including the Bash tool commands the CLI starts with ``setsid``;
- it **watches its owner**: it opens the read end of a pipe whose write end only the
  owning Python process holds (``/proc/OWNER_PID/fd/OWNER_FD``), and polls it; the
  pipe reports a hang-up the moment the owner's last write end closes, however the
  owner died (SIGKILL included), or when the owner closes it to stop everything at once;
- it starts the CLI in a **process group of its own** and passes SIGTERM on to it;
- when the CLI exits, when the owner is gone, or ``GRACE`` seconds after a SIGTERM the CLI
  did not obey, it kills the CLI's group and **every descendant** it can find (a walk of
  /proc by parent pid, repeated until none is left: orphans come to it), reaps them, and
  exits with the CLI's status (a CLI killed by a signal: the launcher dies by the same one).

No library does this: ``PR_SET_PDEATHSIG`` follows the thread that forked (trio forks from a
worker thread) and misses the setsid'd grandchildren; psutil is not in the standard library.

Other systems: without /proc the owner is watched by polling ``getppid()`` every 0.2 s and
only the CLI's process group is killed (there is no subreaper on macOS; a tool that calls
``setsid`` there escapes). Windows does not use the launcher at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
"""From <linux/prctl.h>."""
_POLL_WITHOUT_PROC = 200
"""Milliseconds between two ``getppid()`` checks where the owner's pipe cannot be opened."""
_KILL_WINDOW = 5.0
"""Seconds the final sweep keeps killing what it finds (a process forking in a loop)."""


def make_subreaper() -> bool:
    """Become a child subreaper; False where the system has none (not Linux, old kernel)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def descendants(root: int, *, zombies: bool = False) -> list[int]:
    """Descendants of ``root``, from /proc ([] where there is none); zombies only if ``zombies``.

    A zombie's children are walked all the same: while a killed process exits, its
    children still name it as their parent, until the kernel hands them to us."""
    children: dict[int, list[tuple[int, bool]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append((int(entry), fields[0] in (b"Z", b"X")))
    found: list[int] = []
    todo = [root]
    while todo:
        for child, dead in children.get(todo.pop(), ()):
            if zombies or not dead:
                found.append(child)
            todo.append(child)
    return found


class Launcher:
    """The launcher's state: the CLI it started and how it ended."""

    def __init__(self, owner_pid: int, owner_fd: int, grace: float, command: list[str]) -> None:
        self.owner_pid = owner_pid
        self.grace = grace
        self.command = command
        self.cli_pid = 0
        self.cli_status: int | None = None
        self.subreaper = make_subreaper()
        self.owner_pipe = self._open_owner_pipe(owner_fd)
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)  # the number reaches wake_r; the loop acts on it
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides what a Ctrl-C means

    def _open_owner_pipe(self, owner_fd: int) -> int | None:
        try:
            fd = os.open(f"/proc/{self.owner_pid}/fd/{owner_fd}", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            fd = None
        if os.getppid() != self.owner_pid:  # the owner died before we could watch it
            sys.exit(1)
        return fd

    def owner_alive(self) -> bool:
        """Whether the owner still holds the pipe (or, without /proc, is still our parent)."""
        if self.owner_pipe is None:
            return os.getppid() == self.owner_pid
        ready = select.poll()
        ready.register(self.owner_pipe, select.POLLIN)
        return not ready.poll(0)

    def start(self) -> None:
        """Start the CLI in a process group of its own, with default signal dispositions."""
        reset = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGPIPE}
        if hasattr(signal, "SIGXFSZ"):
            reset.add(signal.SIGXFSZ)
        spawn = os.posix_spawn if os.sep in self.command[0] else os.posix_spawnp
        self.cli_pid = spawn(self.command[0], self.command, os.environ, setpgroup=0, setsigdef=reset)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)  # the owner sees stdout's EOF once the CLI and what it left are gone
        os.dup2(devnull, 1)
        os.close(devnull)

    def reap(self) -> None:
        """Collect every exited child (the CLI, adopted orphans); note the CLI's status."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.cli_pid:
                self.cli_status = status

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to the CLI's group and to every descendant."""
        with contextlib.suppress(OSError):
            os.killpg(self.cli_pid, sig)
        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def run(self) -> None:
        """Wait for the CLI's exit, the owner's death or a SIGTERM; then leave nothing behind."""
        self.start()
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        if self.owner_pipe is not None:
            poller.register(self.owner_pipe, select.POLLIN)
        term_deadline: float | None = None
        owner_gone = False
        while self.cli_status is None:
            timeout = _POLL_WITHOUT_PROC if self.owner_pipe is None else -1
            if term_deadline is not None:
                left = max(0, int((term_deadline - time.monotonic()) * 1000) + 1)
                timeout = left if timeout < 0 else min(timeout, left)
            try:
                ready = poller.poll(timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries poll itself
                ready = []
            signals = b""
            for fd, _ in ready:
                if fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        signals = os.read(self.wake_r, 512)
            if not self.owner_alive():
                owner_gone = True
                break
            if signal.SIGTERM in signals and term_deadline is None:
                with contextlib.suppress(OSError):
                    os.killpg(self.cli_pid, signal.SIGTERM)
                term_deadline = time.monotonic() + self.grace
            self.reap()
            if term_deadline is not None and time.monotonic() >= term_deadline:
                break
        self.sweep(polite=not owner_gone and self.cli_status is not None)

    def sweep(self, *, polite: bool) -> None:
        """Kill what is left: SIGTERM and a grace first if ``polite``, then SIGKILL until
        nothing remains below us; reap it all."""
        if polite and descendants(os.getpid()):
            self.signal_all(signal.SIGTERM)
            deadline = time.monotonic() + self.grace
            while descendants(os.getpid()) and time.monotonic() < deadline and self.owner_alive():
                self.reap()
                time.sleep(0.01)
        deadline = time.monotonic() + _KILL_WINDOW
        while True:
            self.signal_all(signal.SIGKILL)
            self.reap()
            if not descendants(os.getpid(), zombies=True) or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # zombies of our own children, the CLI's among them
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == self.cli_pid:
                self.cli_status = status
            if pid == 0:
                time.sleep(0.005)

    def exit(self) -> None:
        """Exit as the CLI did: its exit code, or death by its signal."""
        status = self.cli_status
        if status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            signal.set_wakeup_fd(-1)
            if sig != signal.SIGKILL:
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else 1
        os._exit(code)


def main(argv: list[str]) -> None:
    """``OWNER_PID OWNER_FD GRACE CLI [ARGS...]``: run the CLI under the launcher."""
    if len(argv) < 4:
        sys.stderr.write("usage: _claude_launcher.py OWNER_PID OWNER_FD GRACE CLI [ARGS...]\n")
        sys.exit(2)
    os.setsid()  # no terminal's signals; the CLI gets a group of its own below
    launcher = Launcher(int(argv[0]), int(argv[1]), float(argv[2]), argv[3:])
    try:
        launcher.run()
    except OSError as exc:
        sys.stderr.write(f"claude launcher: {exc}\n")
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC) and not launcher.cli_pid:
            os._exit(127)
        launcher.sweep(polite=False)
    launcher.exit()


if __name__ == "__main__":
    main(sys.argv[1:])
