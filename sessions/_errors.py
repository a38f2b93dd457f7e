"""The sessions error tree.

::

    SessionError(Exception)
    ├── SessionBusy               the turn queue is full; .session_id, .queued
    ├── BudgetExceeded            a budget is spent before a turn starts; .limit, .spent, .kind
    ├── InvalidOption             an option or argument is malformed; .option, .value
    ├── SessionNotFound           a store holds no records of the session; .session_id
    ├── StoreError                a store could not read or write
    │   ├── CorruptRecord         a stored record cannot be read; .location, .line, .detail
    │   ├── UnstorableRecord      a record cannot be written (not JSON, not UTF-8); .session_id, .seq
    │   ├── SessionInUse          another writer holds the session in the store; .session_id, .store
    │   └── LeaseLost             the writer's lease is no longer the session's current one; .epoch, .current_epoch
    ├── ProviderError             a provider failed; .provider, .kind, .retryable, .status
    │   ├── ProviderUnavailable   missing binary/package, wrong version, cannot connect
    │   ├── ProviderAuthError     bad or missing key (401/403)
    │   ├── ProviderRateLimited   429 / capacity (529); retryable
    │   ├── ProviderTimeout       start-up, idle or whole-turn timeout; .phase
    │   ├── ProviderProtocolError garbage or an oversized frame on the wire; .detail
    │   └── ResumeRejected        the provider does not know the session to resume
    ├── ToolError                 a tool failed; the loop sends .message to the model
    └── ClusterError              a call by name could not be placed in the cluster
        ├── SessionElsewhere      a session that lives on another node (not raised by subscribe); .node_id
        └── ClusterUnavailable    no node could take the call in time; .session_id, .detail

A failed *turn* is not an exception: `send_message` returns a `Result` with ``is_error``
and a `FinishReason`. These errors are raised when there is no turn to report on (a
budget spent before the turn, a full queue) or inside providers, whose errors the
server turns into an error `Result`.
"""

from __future__ import annotations

import attrs


@attrs.define(eq=False, init=False, repr=False, slots=False)
class SessionError(Exception):
    """Base class of every error that `sessions` raises.

    Example::

        try:
            result = await SessionServer.send_message("agent", "hi")
        except sessions.SessionError as exc:
            log.warning("session refused the turn", error=str(exc))
    """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


@attrs.define(eq=False, repr=False, slots=False)
class SessionBusy(SessionError):
    """A turn is running and the turn queue is full.

    Example::

        try:
            await SessionServer.send_message("agent", "more")
        except sessions.SessionBusy as exc:
            print(f"{exc.session_id} has {exc.queued} turns waiting")
    """

    session_id: str
    queued: int

    def __str__(self) -> str:
        return f"session {self.session_id!r} is busy: {self.queued} turn(s) already queued (max_queued_turns)"


@attrs.define(eq=False, repr=False, slots=False)
class BudgetExceeded(SessionError):
    """A session budget (``kind`` is ``"cost"`` or ``"turns"``) is spent; no turn was started.

    Example::

        except sessions.BudgetExceeded as exc:
            print(f"spent {exc.spent} of {exc.limit} ({exc.kind})")
    """

    session_id: str
    kind: str
    limit: float
    spent: float

    def __str__(self) -> str:
        return f"session {self.session_id!r} has spent its {self.kind} budget: {self.spent} of {self.limit}"


@attrs.define(eq=False, repr=False, slots=False)
class InvalidOption(SessionError, ValueError):
    """An option or argument is malformed (also a `ValueError`).

    Example::

        SessionServer.child_spec(name="a", provider=p, max_queued_turns=-1)  # InvalidOption
    """

    option: str
    value: object
    problem: str

    def __str__(self) -> str:
        return f"invalid {self.option}={self.value!r}: {self.problem}"


@attrs.define(eq=False, repr=False, slots=False)
class SessionNotFound(SessionError, LookupError):
    """A store holds no records of ``session_id`` (`SessionServer.load`).

    Example::

        try:
            session = await SessionServer.load(store, "s-typo")
        except sessions.SessionNotFound as exc:
            print("no such session:", exc.session_id)
    """

    session_id: str

    def __str__(self) -> str:
        return f"the store holds no session {self.session_id!r}"


@attrs.define(eq=False, repr=False, slots=False)
class StoreError(SessionError):
    """A store could not read or write a session's records.

    Example::

        except sessions.StoreError as exc:
            print("store failed:", exc)
    """

    message: str

    def __str__(self) -> str:
        return self.message


class CorruptRecord(StoreError):
    """A stored record cannot be read; ``location`` is a file or table, ``line`` where.

    Example::

        except sessions.CorruptRecord as exc:
            print(f"fix {exc.location} line {exc.line}: {exc.detail}")
    """

    def __init__(self, location: str, line: int, detail: str) -> None:
        super().__init__(f"corrupt record in {location} at line {line}: {detail}")
        self.location = location
        self.line = line
        self.detail = detail


class UnstorableRecord(StoreError):
    """A record cannot be written: its ``data`` is not JSON, or a string in it is not
    valid Unicode (a lone surrogate cannot be encoded as UTF-8). Only the append that
    carries it fails; nothing of it is written.

    Example::

        except sessions.UnstorableRecord as exc:
            print(f"{exc.session_id}#{exc.seq} refused: {exc.detail}")
    """

    def __init__(self, session_id: str, seq: int, detail: str) -> None:
        super().__init__(f"record {session_id!r}#{seq} cannot be stored {detail}")
        self.session_id = session_id
        self.seq = seq
        self.detail = detail


class SessionInUse(StoreError):
    """Another writer holds the session in this store: one writer per session per store.

    ``store`` names the store (its file or directory), ``holder`` says who holds the
    session (a process of this program, or another OS process).

    Example::

        except sessions.SessionInUse as exc:
            print(f"{exc.session_id} is already open in {exc.store} ({exc.holder})")
    """

    def __init__(self, session_id: str, store: str, holder: str, waited: float) -> None:
        super().__init__(
            f"session {session_id!r} is in use in {store}: {holder} holds it"
            f" (waited {waited:g} s; a session has one writer per store)"
        )
        self.session_id = session_id
        self.store = store
        self.holder = holder
        self.waited = waited


class LeaseLost(StoreError):
    """An append (or a claim) was refused because this writer no longer owns the session:
    its lease's ``epoch`` is not the session's ``current_epoch`` (another node took the
    session over, or the lease was released), or the store's node is fenced (it was cut
    off from the database, or paused, past its lease). Nothing of the refused append was
    written. ``holder`` is the node that holds the session now (None: nobody, or unknown).

    A writer that gets it must stop writing the session: another copy of it may be live.

    Example::

        try:
            await store.append("s1", records, durable=True)
        except sessions.LeaseLost as exc:
            print(f"{exc.session_id}: epoch {exc.epoch} is stale (now {exc.current_epoch}, {exc.holder})")
    """

    def __init__(
        self, session_id: str, epoch: int | None, current_epoch: int | None, holder: str | None, detail: str = ""
    ) -> None:
        now = "no lease" if current_epoch is None else f"epoch {current_epoch}, held by {holder or 'nobody'}"
        mine = "no claim" if epoch is None else f"epoch {epoch}"
        super().__init__(
            f"lease of session {session_id!r} lost: this writer has {mine}, the session has {now}"
            + (f" ({detail})" if detail else "")
        )
        self.session_id = session_id
        self.epoch = epoch
        self.current_epoch = current_epoch
        self.holder = holder
        self.detail = detail


@attrs.define(eq=False, repr=False, slots=False)
class ProviderError(SessionError):
    """A provider failed. ``kind`` names the failure, ``retryable`` says whether to retry.

    Example::

        except sessions.ProviderError as exc:
            if exc.retryable:
                await trio.sleep(1)
    """

    provider: str
    message: str
    kind: str = "unknown"
    retryable: bool = False
    status: int | None = None

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.provider}: {self.message}{status}"


class ProviderUnavailable(ProviderError):
    """The provider cannot run: a missing binary or package, a wrong version, no connection.

    Example::

        except sessions.ProviderUnavailable:
            print("install the extra: pip install 'otpy-sessions[claude]'")
    """


class ProviderAuthError(ProviderError):
    """The provider refused the credentials (HTTP 401/403, or a CLI auth failure).

    Example::

        except sessions.ProviderAuthError:
            print("check ANTHROPIC_API_KEY")
    """


class ProviderRateLimited(ProviderError):
    """The provider is rate limited or over capacity (HTTP 429/529); retryable.

    Example::

        except sessions.ProviderRateLimited:
            await trio.sleep(5)
    """


@attrs.define(eq=False, repr=False, slots=False)
class ProviderTimeout(ProviderError):
    """A provider timeout passed: ``phase`` is ``"startup"``, ``"idle"`` or ``"turn"``.

    Example::

        except sessions.ProviderTimeout as exc:
            print("timed out while", exc.phase)
    """

    phase: str = "turn"


@attrs.define(eq=False, repr=False, slots=False)
class ProviderProtocolError(ProviderError):
    """The provider sent something unreadable: garbage, a malformed chunk, an oversized frame.

    Example::

        except sessions.ProviderProtocolError as exc:
            print("bad frame:", exc.detail)
    """

    detail: str = ""


class ResumeRejected(ProviderError):
    """The provider does not know the session it was asked to resume.

    Example::

        except sessions.ResumeRejected:
            print("the provider lost the conversation")
    """


@attrs.define(eq=False, repr=False, slots=False)
class ToolError(SessionError):
    """A tool failed in a way the model should read: a path outside ``cwd``, a missing file,
    a non-unique ``edit``, a command that timed out. The agent loop sends ``message`` back to
    the model as an error tool result; the turn goes on. Raise it from your own tools.

    Example::

        @sessions.tool
        async def fetch_order(order_id: int) -> str:
            \"\"\"Look an order up.\"\"\"
            if order_id not in ORDERS:
                raise sessions.ToolError(f"no order {order_id}")
            return ORDERS[order_id]
    """

    message: str

    def __str__(self) -> str:
        return self.message


@attrs.define(eq=False, repr=False, slots=False)
class ClusterError(SessionError):
    """A call by name could not be placed in the cluster (see `sessions.ClusterNode`).

    Example::

        try:
            await SessionServer.send_message("my_agent", "hi")
        except sessions.ClusterError as exc:
            log.warning("cluster call failed", error=str(exc))
    """


@attrs.define(eq=False, repr=False, slots=False)
class SessionElsewhere(ClusterError):
    """A session that lives on another node (``node_id``, reachable at ``address``), for a
    client function that works only where the session runs.

    `ClusterNode` no longer raises it for `SessionServer.subscribe`, which streams the
    owner's events to any node; it stays for code that catches it, and for such
    functions.

    Example::

        try:
            await SessionServer.send_message("my_agent", "hi")
        except sessions.SessionElsewhere as exc:
            print(f"{exc.session_id} lives on {exc.node_id} ({exc.address})")
    """

    session_id: str
    node_id: str
    address: str | None = None

    def __str__(self) -> str:
        return f"session {self.session_id!r} lives on node {self.node_id!r} ({self.address}): subscribe there"


@attrs.define(eq=False, repr=False, slots=False)
class ClusterUnavailable(ClusterError):
    """No node could take a call by name within the node's ``route_timeout``: the database is
    unreachable, this node is stopped or fenced, or the session's owner kept refusing.
    Nothing ran; calling again later is safe (with an ``idempotency_key`` for a turn).

    Example::

        except sessions.ClusterUnavailable as exc:
            print(f"{exc.session_id}: {exc.detail}")
    """

    session_id: str
    detail: str

    def __str__(self) -> str:
        return f"no node of the cluster could take the call to {self.session_id!r}: {self.detail}"
