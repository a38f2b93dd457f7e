"""The public namespace: what otpy exports, where it claims to live, and how it is documented."""

from __future__ import annotations

import inspect
import types
from typing import Any

import pytest
import trio

import otpy
import sessions

# Public names that are data, not classes or functions: they have no __module__ or
# docstring of their own (TIMEOUT is an instance; its class is checked instead).
DATA_CONSTANTS = {"TIMEOUT"}

PUBLIC = {name: obj for name, obj in vars(otpy).items() if not name.startswith("_")}

# The core's surface (issue 2): these names must stay exported.
CORE = {
    "AlreadyPresent",
    "AlreadyRegistered",
    "AlreadyStarted",
    "Call",
    "CallError",
    "CallTimeout",
    "CallingSelf",
    "ChildCounts",
    "ChildInfo",
    "ChildNotFound",
    "ChildRestarting",
    "ChildRunning",
    "ChildSpec",
    "Down",
    "DynamicSupervisor",
    "DynamicSupervisorSpec",
    "ExitSignal",
    "From",
    "GenServer",
    "Ignore",
    "InactivityTimeout",
    "InvalidChildSpec",
    "InvalidSupervisorFlags",
    "MaxChildren",
    "MonitorRef",
    "NoProcess",
    "NoReply",
    "OtpError",
    "Pid",
    "ProcessExit",
    "Reply",
    "ServerExited",
    "StartError",
    "StartIgnored",
    "Stop",
    "Supervisor",
    "SupervisorError",
    "SupervisorSpec",
    "TIMEOUT",
    "Via",
    "ViaRegistry",
    "call",
    "cast",
    "current_process",
    "demonitor",
    "exit",
    "get_state",
    "is_normal_reason",
    "link",
    "monitor",
    "registered",
    "reply",
    "self",
    "send",
    "stop",
    "trap_exit",
    "unlink",
    "via",
    "whereis",
}


def documented() -> list[Any]:
    return [pytest.param(obj, id=name) for name, obj in sorted(PUBLIC.items()) if name not in DATA_CONSTANTS]


def test_core_names_are_exported() -> None:
    """Every name of the core API is importable from otpy."""
    missing = CORE - PUBLIC.keys()
    assert not missing


def test_no_modules_leak() -> None:
    """No submodule or imported library is exported under a public name."""
    assert [name for name, obj in PUBLIC.items() if isinstance(obj, types.ModuleType)] == []


@pytest.mark.parametrize("obj", documented())
def test_public_names_claim_otpy(obj: object) -> None:
    """Every public class and function says it lives in otpy, not in a private module."""
    assert obj.__module__ == "otpy"  # type: ignore[attr-defined]


@pytest.mark.parametrize("obj", documented())
def test_public_names_have_an_example(obj: object) -> None:
    """Every public class and function has a docstring with an example."""
    doc = inspect.getdoc(obj) or ""
    assert "Example" in doc


def test_data_constants() -> None:
    """The data constants are what their docs say, and their classes are documented and exported."""
    assert DATA_CONSTANTS.issubset(PUBLIC)
    assert isinstance(otpy.TIMEOUT, otpy.InactivityTimeout)
    assert type(otpy.TIMEOUT).__module__ == "otpy"
    assert isinstance(otpy.__version__, str)
    assert otpy.__version__
    assert sessions.__version__ == otpy.__version__  # one distribution, one version


def test_repr_says_otpy() -> None:
    """Reprs and tracebacks name otpy, not the private module."""
    assert repr(otpy.Supervisor) == "<class 'otpy.Supervisor'>"
    assert f"{otpy.ServerExited.__module__}.{otpy.ServerExited.__qualname__}" == "otpy.ServerExited"


@pytest.mark.parametrize(
    "cls",
    [otpy.GenServer, otpy.Supervisor, otpy.DynamicSupervisor, otpy.Pid, otpy.MonitorRef, otpy.From],
    ids=lambda cls: cls.__name__,
)
def test_public_methods_are_documented(cls: type) -> None:
    """Every public method and property of the main classes has a docstring."""
    missing = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            doc = inspect.getdoc(member)
        elif callable(member) or isinstance(member, (staticmethod, classmethod)):
            doc = inspect.getdoc(getattr(cls, name))
        else:
            continue
        if not doc:
            missing.append(name)
    assert missing == []


# --- the error tree -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        (otpy.CallError, (otpy.OtpError,)),
        (otpy.NoProcess, (otpy.CallError,)),
        (otpy.CallTimeout, (otpy.CallError, trio.TooSlowError)),
        (otpy.ServerExited, (otpy.CallError,)),
        (otpy.CallingSelf, (otpy.CallError,)),
        (otpy.AlreadyRegistered, (otpy.OtpError,)),
        (otpy.StartError, (otpy.OtpError,)),
        (otpy.StartIgnored, (otpy.StartError,)),
        (otpy.InvalidChildSpec, (otpy.OtpError, ValueError)),
        (otpy.InvalidSupervisorFlags, (otpy.OtpError, ValueError)),
        (otpy.SupervisorError, (otpy.OtpError,)),
        (otpy.ChildNotFound, (otpy.SupervisorError,)),
        (otpy.ChildRunning, (otpy.SupervisorError,)),
        (otpy.ChildRestarting, (otpy.SupervisorError,)),
        (otpy.AlreadyStarted, (otpy.SupervisorError,)),
        (otpy.AlreadyPresent, (otpy.SupervisorError,)),
        (otpy.MaxChildren, (otpy.SupervisorError,)),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_error_tree(error: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    """Each error sits where the tree in otpy's error docs draws it."""
    for base in bases:
        assert issubclass(error, base)


def test_process_exit_is_not_an_otp_error() -> None:
    """ProcessExit is a way to exit, not an otpy error."""
    assert issubclass(otpy.ProcessExit, Exception)
    assert not issubclass(otpy.ProcessExit, otpy.OtpError)


def test_errors_render_their_data() -> None:
    """Errors keep their data as attributes and mention it in their message."""
    error = otpy.ServerExited("srv", ValueError("bad"))
    assert error.server == "srv"
    assert "ValueError('bad')" in str(error)
    assert repr(error).startswith("ServerExited(")
    assert "'srv'" in str(otpy.NoProcess("srv"))
    assert "2.5" in str(otpy.CallTimeout("srv", "ping", 2.5))
    assert "'c1'" in str(otpy.StartError("c1", "nope"))
    assert "'nope'" in str(otpy.StartError(None, "nope"))
    assert "3" in str(otpy.MaxChildren(3))


# --- what a pid, a From and a MonitorRef let users touch (issue 8) -------------------------


@pytest.mark.parametrize(
    ("cls", "public"),
    [
        (
            otpy.Pid,
            {"alive", "exit_reason", "mailbox_size", "name", "parent", "started_at", "trap_exit", "wait_exited"},
        ),
        (otpy.From, {"caller", "pid", "request", "waiting"}),
        (otpy.MonitorRef, {"target", "wait"}),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_handles_expose_only_what_users_may_call(cls: type, public: set[str]) -> None:
    """Internals (delivering, finishing, killing, the live server object) are private names."""
    assert {name for name in dir(cls) if not name.startswith("_")} == public
