"""Child specs and supervisor flags: what is accepted, and how a malformed one is reported."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import otpy


class Noop(otpy.GenServer):
    """A server that does nothing."""

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return None


START = functools.partial(Noop.start_link)

# --- strategies ---------------------------------------------------------------------------

ids = st.one_of(st.text(max_size=8), st.integers(), st.tuples(st.text(max_size=3), st.integers()))
restarts = st.sampled_from(["permanent", "transient", "temporary"])
shutdowns = st.one_of(
    st.none(),
    st.sampled_from(["brutal_kill", "infinity"]),
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, allow_nan=False),
)
types = st.sampled_from(["worker", "supervisor"])

bad_restarts = st.one_of(
    st.text().filter(lambda s: s not in ("permanent", "transient", "temporary")),
    st.none(),
    st.integers(),
)
bad_shutdowns = st.one_of(
    st.integers(max_value=-1),
    st.floats(max_value=-1e-9),
    st.just(math.nan),
    st.text().filter(lambda s: s not in ("brutal_kill", "infinity")),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
bad_types = st.one_of(st.text().filter(lambda s: s not in ("worker", "supervisor")), st.none(), st.integers())
bad_significants = st.one_of(st.integers(), st.none(), st.text())
bad_starts = st.one_of(st.integers(), st.none(), st.text(), st.lists(st.integers(), max_size=2))


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    restart = draw(restarts)
    significant = draw(st.booleans()) if restart != "permanent" else False
    return {
        "id": draw(ids),
        "start": START,
        "restart": restart,
        "shutdown": draw(shutdowns),
        "type": draw(types),
        "significant": significant,
    }


class TestValidSpecs:
    @given(fields=valid_specs())
    def test_valid_fields_are_accepted(self, fields: dict[str, Any]) -> None:
        """Any well-formed combination of fields makes a ChildSpec that keeps them."""
        spec = otpy.ChildSpec(**fields)
        for key, value in fields.items():
            assert getattr(spec, key) == value

    @given(fields=valid_specs())
    def test_shutdown_seconds(self, fields: dict[str, Any]) -> None:
        """shutdown_seconds applies the defaults: 5 s for a worker, infinity for a supervisor."""
        spec = otpy.ChildSpec(**fields)
        shutdown = fields["shutdown"]
        if shutdown is None:
            expected: object = 5.0 if fields["type"] == "worker" else math.inf
        elif shutdown == "infinity":
            expected = math.inf
        elif shutdown == "brutal_kill":
            expected = "brutal_kill"
        else:
            expected = float(shutdown)
        assert spec.shutdown_seconds == expected

    def test_defaults(self) -> None:
        """A ChildSpec defaults to a permanent, non-significant worker with the default shutdown."""
        spec = otpy.ChildSpec(id="x", start=START)
        assert (spec.restart, spec.shutdown, spec.type, spec.significant) == ("permanent", None, "worker", False)
        assert spec.shutdown_seconds == 5.0

    def test_gen_server_child_spec(self) -> None:
        """GenServer.child_spec names the child after name, else the class, and passes the options on."""
        assert Noop.child_spec().id == "Noop"
        assert Noop.child_spec(name="n").id == "n"
        spec = Noop.child_spec(1, id="custom", name="n", restart="transient", shutdown=3, significant=True)
        assert (spec.id, spec.restart, spec.shutdown, spec.significant, spec.type) == (
            "custom",
            "transient",
            3,
            True,
            "worker",
        )
        assert otpy.Supervisor.child_spec().type == "supervisor"
        assert otpy.DynamicSupervisor.child_spec().type == "supervisor"


# --- invalid fields -------------------------------------------------------------------------


def check_error(error: otpy.InvalidChildSpec, child_id: object, field: str, value: object) -> None:
    assert error.child_id == child_id
    assert error.field == field
    if not (isinstance(value, float) and math.isnan(value)):
        assert error.value == value
    assert field in str(error)
    assert repr(child_id) in str(error)
    assert isinstance(error, ValueError)
    assert isinstance(error, otpy.OtpError)


class TestInvalidFields:
    @given(child_id=ids, value=bad_starts)
    def test_start(self, child_id: object, value: object) -> None:
        """A start that is not callable is rejected, naming the child and "start"."""
        with pytest.raises(otpy.InvalidChildSpec) as info:
            otpy.ChildSpec(id=child_id, start=value)  # type: ignore[arg-type]
        check_error(info.value, child_id, "start", value)

    @given(child_id=ids, value=bad_restarts)
    def test_restart(self, child_id: object, value: object) -> None:
        """An unknown restart type is rejected, naming the child and "restart"."""
        with pytest.raises(otpy.InvalidChildSpec) as info:
            otpy.ChildSpec(id=child_id, start=START, restart=value)  # type: ignore[arg-type]
        check_error(info.value, child_id, "restart", value)

    @given(child_id=ids, value=bad_shutdowns)
    def test_shutdown(self, child_id: object, value: object) -> None:
        """A negative, NaN, boolean or unknown shutdown is rejected, naming the child and "shutdown"."""
        with pytest.raises(otpy.InvalidChildSpec) as info:
            otpy.ChildSpec(id=child_id, start=START, shutdown=value)  # type: ignore[arg-type]
        check_error(info.value, child_id, "shutdown", value)

    @given(child_id=ids, value=bad_types)
    def test_type(self, child_id: object, value: object) -> None:
        """A type other than worker or supervisor is rejected, naming the child and "type"."""
        with pytest.raises(otpy.InvalidChildSpec) as info:
            otpy.ChildSpec(id=child_id, start=START, type=value)  # type: ignore[arg-type]
        check_error(info.value, child_id, "type", value)

    @given(child_id=ids, value=bad_significants, restart=restarts)
    def test_significant(self, child_id: object, value: object, restart: str) -> None:
        """A significant flag that is not a bool is rejected, naming the child and "significant"."""
        with pytest.raises(otpy.InvalidChildSpec) as info:
            otpy.ChildSpec(id=child_id, start=START, restart=restart, significant=value)  # type: ignore[arg-type]
        check_error(info.value, child_id, "significant", value)
        assert info.value.conflict is None

    def test_significant_permanent(self) -> None:
        """A significant permanent child is a conflict with restart="permanent"."""
        with pytest.raises(otpy.InvalidChildSpec) as info:
            otpy.ChildSpec(id="s", start=START, significant=True)
        check_error(info.value, "s", "significant", True)
        assert info.value.conflict == ("restart", "permanent")

    def test_unhashable_id(self) -> None:
        """An unhashable id is rejected, naming "id"."""
        with pytest.raises(otpy.InvalidChildSpec) as info:
            otpy.ChildSpec(id=["a"], start=START)  # type: ignore[arg-type]
        assert info.value.field == "id"

    def test_specs_are_immutable(self) -> None:
        """A ChildSpec cannot be changed after it is made."""
        spec = otpy.ChildSpec(id="x", start=START)
        with pytest.raises(AttributeError):
            spec.restart = "temporary"  # type: ignore[misc]


# --- specs given to supervisors -----------------------------------------------------------


class TestSpecsInSupervisors:
    @pytest.mark.parametrize(
        ("spec", "child_id", "field"),
        [
            pytest.param({"start": START}, None, "id", id="missing-id"),
            pytest.param({"id": "m"}, "m", "start", id="missing-start"),
            pytest.param({"id": "m", "start": START, "restarts": "permanent"}, "m", "restarts", id="unknown-key"),
            pytest.param({"id": "m", "start": 1}, "m", "start", id="bad-start"),
            pytest.param({"id": "m", "start": START, "restart": "always"}, "m", "restart", id="bad-restart"),
            pytest.param({"id": "m", "start": START, "shutdown": -5}, "m", "shutdown", id="bad-shutdown"),
            pytest.param({"id": "m", "start": START, "type": "daemon"}, "m", "type", id="bad-type"),
            pytest.param({"id": "m", "start": START, "significant": "y"}, "m", "significant", id="bad-significant"),
            pytest.param(42, None, "spec", id="not-a-spec"),
            pytest.param((Noop, 1, 2), None, "spec", id="long-tuple"),
        ],
    )
    async def test_start_child_reports_the_field(
        self, nursery: trio.Nursery, spec: object, child_id: object, field: str
    ) -> None:
        """Supervisor.start_child of a malformed spec raises InvalidChildSpec naming the child and field."""
        sup = await otpy.Supervisor.start_link([], nursery=nursery)
        with pytest.raises(otpy.InvalidChildSpec) as info:
            await otpy.Supervisor.start_child(sup, spec)  # type: ignore[arg-type]
        assert info.value.child_id == child_id
        assert info.value.field == field
        assert sup.alive
        assert await otpy.Supervisor.which_children(sup) == []

    async def test_unhashable_id_does_not_crash_the_supervisor(self, nursery: trio.Nursery) -> None:
        """Supervisor.start_child with an unhashable id raises InvalidChildSpec and the supervisor lives on."""
        sup = await otpy.Supervisor.start_link([], nursery=nursery)
        with pytest.raises(otpy.InvalidChildSpec) as info:
            await otpy.Supervisor.start_child(sup, {"id": ["a"], "start": START})
        assert info.value.field == "id"
        assert sup.alive

    async def test_dict_spec_is_accepted(self, nursery: trio.Nursery) -> None:
        """A mapping with child spec keys works as a child spec."""
        sup = await otpy.Supervisor.start_link([], nursery=nursery)
        pid = await otpy.Supervisor.start_child(sup, {"id": "d", "start": START, "restart": "transient"})
        assert isinstance(pid, otpy.Pid)
        [info] = await otpy.Supervisor.which_children(sup)
        assert info == otpy.ChildInfo("d", pid, "worker")

    async def test_significant_with_auto_shutdown_never(self, nursery: trio.Nursery) -> None:
        """A significant child under auto_shutdown="never" is rejected as a conflict with it."""
        spec = otpy.ChildSpec(id="s", start=START, restart="transient", significant=True)
        sup = await otpy.Supervisor.start_link([], nursery=nursery)
        with pytest.raises(otpy.InvalidChildSpec) as info:
            await otpy.Supervisor.start_child(sup, spec)
        assert info.value.conflict == ("auto_shutdown", "never")
        assert info.value.field == "significant"
        with pytest.raises(otpy.StartError) as start_info:
            await otpy.Supervisor.start_link([spec], nursery=nursery)
        reason = start_info.value.reason
        assert isinstance(reason, otpy.InvalidChildSpec)
        assert reason.conflict == ("auto_shutdown", "never")
        assert reason.child_id == "s"

    async def test_significant_accepted_with_auto_shutdown(self, nursery: trio.Nursery) -> None:
        """A significant transient child is accepted by an auto_shutdown supervisor."""
        spec = otpy.ChildSpec(id="s", start=START, restart="transient", significant=True)
        sup = await otpy.Supervisor.start_link([spec], auto_shutdown="all_significant", nursery=nursery)
        assert (await otpy.Supervisor.count_children(sup)).active == 1

    async def test_invalid_spec_fails_the_supervisor_start(self, nursery: trio.Nursery) -> None:
        """A malformed spec in the initial children fails the start with InvalidChildSpec as reason and cause."""
        with pytest.raises(otpy.StartError) as info:
            await otpy.Supervisor.start_link([{"id": "bad", "start": START, "type": "x"}], nursery=nursery)
        reason = info.value.reason
        assert isinstance(reason, otpy.InvalidChildSpec)
        assert (reason.child_id, reason.field, reason.value) == ("bad", "type", "x")
        assert info.value.__cause__ is reason

    async def test_duplicate_ids(self, nursery: trio.Nursery) -> None:
        """Two initial children with the same id fail the start, naming the id."""
        with pytest.raises(otpy.StartError) as info:
            await otpy.Supervisor.start_link([Noop.child_spec(id="d"), Noop.child_spec(id="d")], nursery=nursery)
        reason = info.value.reason
        assert isinstance(reason, otpy.InvalidChildSpec)
        assert (reason.child_id, reason.field) == ("d", "id")


# --- supervisor flags -----------------------------------------------------------------------


class TestSupervisorFlags:
    @pytest.mark.parametrize(
        ("flags", "flag"),
        [
            pytest.param({"strategy": "simple_one_for_one"}, "strategy", id="strategy"),
            pytest.param({"max_restarts": -1}, "max_restarts", id="negative-max-restarts"),
            pytest.param({"max_restarts": 1.5}, "max_restarts", id="float-max-restarts"),
            pytest.param({"max_restarts": True}, "max_restarts", id="bool-max-restarts"),
            pytest.param({"max_seconds": 0}, "max_seconds", id="zero-max-seconds"),
            pytest.param({"max_seconds": "5"}, "max_seconds", id="str-max-seconds"),
            pytest.param({"auto_shutdown": "sometimes"}, "auto_shutdown", id="auto-shutdown"),
        ],
    )
    async def test_invalid_flag(self, nursery: trio.Nursery, flags: dict[str, Any], flag: str) -> None:
        """An invalid supervisor flag fails the start with InvalidSupervisorFlags naming the flag."""
        with pytest.raises(otpy.StartError) as info:
            await otpy.Supervisor.start_link([Noop.child_spec()], nursery=nursery, **flags)
        reason = info.value.reason
        assert isinstance(reason, otpy.InvalidSupervisorFlags)
        assert reason.flag == flag
        assert reason.value == flags[flag]
        assert flag in str(reason)
        assert isinstance(reason, ValueError)

    async def test_invalid_flag_starts_no_child(self, nursery: trio.Nursery) -> None:
        """A supervisor with an invalid flag starts none of its children."""
        with pytest.raises(otpy.StartError):
            await otpy.Supervisor.start_link([Noop.child_spec(name="noop")], max_seconds=-1, nursery=nursery)
        assert otpy.whereis("noop") is None

    @pytest.mark.parametrize(
        "flags",
        [
            pytest.param({"max_restarts": 0, "max_seconds": 0.5}, id="fractional-seconds"),
            pytest.param({"strategy": "rest_for_one", "auto_shutdown": "any_significant"}, id="rest-for-one"),
        ],
    )
    async def test_valid_flags(self, nursery: trio.Nursery, flags: dict[str, Any]) -> None:
        """Boundary flag values are accepted."""
        sup = await otpy.Supervisor.start_link([], nursery=nursery, **flags)
        assert sup.alive
