"""An init parameter named like a start option is rejected when the class is defined (issue 8)."""

from __future__ import annotations

import pytest
import trio

import otpy


@pytest.mark.parametrize("option", ["name", "nursery", "id", "restart", "shutdown", "significant"])
def test_an_init_parameter_named_like_a_start_option_is_rejected(option: str) -> None:
    """The class statement itself raises, naming the class, the parameter and the ways out."""
    namespace: dict[str, object] = {}
    source = f"class User(otpy.GenServer):\n    async def init(self, {option}):\n        pass\n"
    with pytest.raises(TypeError, match=rf"User\.init has a parameter '{option}'") as info:
        exec(source, {"otpy": otpy}, namespace)
    message = str(info.value)
    assert "Rename the parameter" in message
    assert f"async def init(self, {option}, /)" in message
    assert "config object" in message
    assert "User" not in namespace


def test_a_keyword_only_parameter_is_rejected() -> None:
    """A keyword-only parameter could never reach init: rejected too."""
    with pytest.raises(TypeError, match="parameter 'name'"):

        class User(otpy.GenServer):
            async def init(self, *, name: str) -> None:
                self.user = name


def test_subclasses_of_supervisors_are_checked() -> None:
    """Module-based supervisors go through the same check."""
    with pytest.raises(TypeError, match=r"App\.init has a parameter 'name'"):

        class App(otpy.Supervisor):
            async def init(self, name: str) -> otpy.SupervisorSpec:  # type: ignore[override]
                return otpy.SupervisorSpec([])


async def test_a_positional_only_parameter_is_allowed(nursery: trio.Nursery) -> None:
    """Positional-only, the parameter cannot be mistaken for the option: init gets it, name registers."""

    class User(otpy.GenServer):
        async def init(self, name: str, /) -> None:
            self.user = name

        async def handle_call(self, request: object, from_: otpy.From) -> str:
            return self.user

    pid = await User.start_link("alice", name="users.alice", nursery=nursery)
    assert otpy.whereis("users.alice") is pid
    assert await otpy.call(pid, "who") == "alice"
    await otpy.stop(pid)


def test_other_parameter_names_are_fine() -> None:
    """Parameters that are not start options, and **kwargs, are not affected."""

    class User(otpy.GenServer):
        async def init(self, user_name: str, *args: object, **options: object) -> None:
            self.user = user_name

    assert User.__name__ == "User"
