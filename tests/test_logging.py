"""otpy's reports as a guest: standard `logging` governs them unless the application configured structlog."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import trio

import otpy


class Worker(otpy.GenServer):
    async def handle_cast(self, request: Any) -> None:
        raise ValueError(f"cannot {request}")


@pytest.fixture
def plain_logging() -> Iterator[None]:
    """structlog as an application that never configured it finds it (tests/conftest.py configures it)."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.fixture
def otpy_level() -> Iterator[logging.Logger]:
    """The ``otpy`` logger, with its level restored after the test."""
    logger = logging.getLogger("otpy")
    level = logger.level
    try:
        yield logger
    finally:
        logger.setLevel(level)


async def crash_a_child(nursery: trio.Nursery) -> otpy.Pid:
    """Start a supervisor with child "w", crash the child once, and wait for its restart."""
    sup = await otpy.Supervisor.start_link([Worker.child_spec(name="w")], name="sup", nursery=nursery)
    first = otpy.whereis("w")
    assert first is not None
    otpy.cast(first, "work")
    await first.wait_exited()
    await otpy.Supervisor.count_children(sup)  # queued behind the exit signal: the restart is done
    return sup


@pytest.fixture
def default_levels(caplog: pytest.LogCaptureFixture) -> None:
    """The root logger at WARNING (logging's default), and a capturing handler that lets everything through."""
    caplog.set_level(logging.WARNING)
    caplog.handler.setLevel(logging.NOTSET)


def otpy_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("otpy")]


@pytest.mark.usefixtures("plain_logging", "default_levels")
class TestPlainLogging:
    async def test_reports_are_records_of_named_loggers(
        self, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A crash gives one error record per report, on otpy.gen_server and otpy.supervisor."""
        sup = await crash_a_child(nursery)
        got = [(r.name, r.levelname, r.otpy_event) for r in otpy_records(caplog)]  # type: ignore[attr-defined]
        assert got == [
            ("otpy.gen_server", "ERROR", "server_crashed"),
            ("otpy.supervisor", "ERROR", "child_terminated"),
        ]
        await otpy.stop(sup)

    async def test_a_record_is_one_readable_line_with_the_traceback(
        self, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Values are rendered once (child_id=w, not child_id="'w'"); the crash report carries exc_info."""
        sup = await crash_a_child(nursery)
        crashed, terminated = otpy_records(caplog)
        assert terminated.getMessage() == (
            "child_terminated report=supervisor supervisor=sup child_id=w restart=permanent "
            "reason=ValueError('cannot work')"
        )
        assert terminated.otpy_fields["child_id"] == "w"  # type: ignore[attr-defined]
        assert isinstance(terminated.otpy_fields["reason"], ValueError)  # type: ignore[attr-defined]
        assert terminated.exc_info is None
        assert crashed.getMessage().startswith("server_crashed report=crash server=<Pid Worker#")
        assert crashed.exc_info is not None
        assert crashed.exc_info[1] is terminated.otpy_fields["reason"]  # type: ignore[attr-defined]
        assert crashed.funcName == "_serve"  # the otpy function that reported, not the bridge
        await otpy.stop(sup)

    async def test_debug_reports_are_hidden_by_default(
        self, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
    ) -> None:
        """At logging's default level (WARNING) the progress reports are not even formatted."""
        sup = await otpy.Supervisor.start_link([Worker.child_spec(name="w")], nursery=nursery)
        await otpy.stop(sup)
        assert otpy_records(caplog) == []

    async def test_the_otpy_logger_level_lets_debug_through(
        self, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, otpy_level: logging.Logger
    ) -> None:
        """logging.getLogger("otpy").setLevel(DEBUG) shows the progress reports."""
        otpy_level.setLevel(logging.DEBUG)
        sup = await otpy.Supervisor.start_link([Worker.child_spec(name="w")], name="sup", nursery=nursery)
        await otpy.stop(sup)
        [started] = otpy_records(caplog)
        assert (started.name, started.levelno) == ("otpy.supervisor", logging.DEBUG)
        assert started.getMessage() == "child_started report=progress supervisor=sup child_id=w restart=permanent"

    async def test_the_otpy_logger_level_silences_errors(
        self, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, otpy_level: logging.Logger
    ) -> None:
        """logging.getLogger("otpy").setLevel(CRITICAL) drops the crash reports."""
        otpy_level.setLevel(logging.CRITICAL)
        sup = await crash_a_child(nursery)
        await otpy.stop(sup)
        assert otpy_records(caplog) == []

    async def test_structlog_sees_nothing(self, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
        """Unconfigured, structlog's own defaults (print to stdout) are never used."""
        processors = structlog.get_config()["processors"]
        seen: list[object] = []

        def spy(_logger: object, _method: str, event: Any) -> Any:
            seen.append(event)
            return event

        processors.insert(0, spy)
        try:
            sup = await crash_a_child(nursery)
            await otpy.stop(sup)
        finally:
            del processors[0]
        assert seen == []
        assert len(otpy_records(caplog)) == 2


class TestStructlogConfigured:
    async def test_event_dicts_carry_the_values(self, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
        """With structlog configured, reports are event dicts with the values themselves, and logging gets none."""
        caplog.set_level(logging.DEBUG)
        with structlog.testing.capture_logs() as logs:
            sup = await crash_a_child(nursery)
            await otpy.stop(sup)
        [terminated] = [e for e in logs if e["event"] == "child_terminated"]
        assert terminated["child_id"] == "w"
        assert terminated["supervisor"] == "sup"
        assert isinstance(terminated["reason"], ValueError)
        assert terminated["log_level"] == "error"
        assert "exc_info" not in terminated
        [crashed] = [e for e in logs if e["event"] == "server_crashed"]
        assert crashed["exc_info"] is terminated["reason"]
        assert isinstance(crashed["server"], otpy.Pid)
        assert otpy_records(caplog) == []

    async def test_structlog_stdlib_integration_names_the_loggers(
        self, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An application that routes structlog into logging gets otpy.* logger names (the docs' recipe)."""
        saved = structlog.get_config()
        structlog.configure(
            processors=[structlog.stdlib.filter_by_level, structlog.processors.KeyValueRenderer()],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        caplog.set_level(logging.WARNING)
        try:
            sup = await crash_a_child(nursery)
            await otpy.stop(sup)
        finally:
            structlog.configure(**saved)
        assert [r.name for r in otpy_records(caplog)] == ["otpy.gen_server", "otpy.supervisor"]
        assert "child_id='w'" in otpy_records(caplog)[1].getMessage()


SCRIPT = textwrap.dedent(
    """
    import trio
    import otpy

    class Worker(otpy.GenServer):
        async def handle_cast(self, request):
            raise ValueError("boom")

    async def main():
        async with trio.open_nursery() as nursery:
            sup = await otpy.Supervisor.start_link([Worker.child_spec(name="w")], name="sup", nursery=nursery)
            first = otpy.whereis("w")
            otpy.cast(first, "work")
            await first.wait_exited()
            await otpy.Supervisor.count_children(sup)
            await otpy.stop(sup)
        print("done")

    trio.run(main)
    """
)


def test_an_unconfigured_program_keeps_stdout_clean() -> None:
    """With no logging or structlog configuration, reports go to stderr (warnings and up) and never to stdout."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == "done\n"
    assert "child_terminated report=supervisor supervisor=sup child_id=w" in done.stderr
    assert "server_crashed report=crash" in done.stderr
    assert "Traceback" in done.stderr
    assert "ValueError: boom" in done.stderr
    assert "child_started" not in done.stderr  # debug level: hidden by default


def test_bound_fields_ride_on_every_event() -> None:
    """get_logger(...).bind(k=v) adds k=v to each event, under structlog as under logging."""
    log = otpy.get_logger("otpy.test_bind").bind(session="s1")
    with structlog.testing.capture_logs() as logs:
        log.warning("turn_slow", turn=3)
    assert logs == [{"event": "turn_slow", "session": "s1", "turn": 3, "log_level": "warning"}]
