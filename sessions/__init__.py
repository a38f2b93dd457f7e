"""sessions: supervised, restartable LLM agent sessions on otpy.

Each section below is owned by one part of the package; keep imports in their section.
"""

# --- values, events, errors, protocols (the contract) ---------------------------------
from ._errors import BudgetExceeded as BudgetExceeded
from ._errors import CorruptRecord as CorruptRecord
from ._errors import InvalidOption as InvalidOption
from ._errors import ProviderAuthError as ProviderAuthError
from ._errors import ProviderError as ProviderError
from ._errors import ProviderProtocolError as ProviderProtocolError
from ._errors import ProviderRateLimited as ProviderRateLimited
from ._errors import ProviderTimeout as ProviderTimeout
from ._errors import ProviderUnavailable as ProviderUnavailable
from ._errors import ResumeRejected as ResumeRejected
from ._errors import SessionBusy as SessionBusy
from ._errors import SessionError as SessionError
from ._errors import SessionNotFound as SessionNotFound
from ._errors import StoreError as StoreError
from ._events import EventsDropped as EventsDropped
from ._events import FinishReason as FinishReason
from ._events import Message as Message
from ._events import MessageAdded as MessageAdded
from ._events import ModelCallFinished as ModelCallFinished
from ._events import ProviderEvent as ProviderEvent
from ._events import ProviderSessionId as ProviderSessionId
from ._events import Result as Result
from ._events import ResultCategory as ResultCategory
from ._events import SessionEvent as SessionEvent
from ._events import TextDelta as TextDelta
from ._events import ThinkingDelta as ThinkingDelta
from ._events import ToolCall as ToolCall
from ._events import ToolCallFinished as ToolCallFinished
from ._events import ToolCallRequested as ToolCallRequested
from ._events import ToolResult as ToolResult
from ._events import TurnCompleted as TurnCompleted
from ._events import TurnFinished as TurnFinished
from ._events import TurnSnapshot as TurnSnapshot
from ._events import TurnStarted as TurnStarted
from ._events import Usage as Usage
from ._providers._base import ModelProvider as ModelProvider
from ._providers._base import Provider as Provider
from ._providers._base import ProviderSession as ProviderSession
from ._providers._base import SessionContext as SessionContext
from ._providers._base import ToolSpec as ToolSpec
from ._providers._base import TurnRequest as TurnRequest
from ._stores._base import RECORD_VERSION as RECORD_VERSION
from ._stores._base import Record as Record
from ._stores._base import Store as Store
from ._stores._memory import InMemoryStore as InMemoryStore

# --- stores (JsonlStore, SqliteStore) -------------------------------------------------
# isort: split
from ._errors import SessionInUse as SessionInUse
from ._errors import UnstorableRecord as UnstorableRecord
from ._stores._claims import SessionClaim as SessionClaim
from ._stores._jsonl import JsonlStore as JsonlStore
from ._stores._sqlite import SqliteStore as SqliteStore

# --- PostgresStore: leases, epochs, fencing (psycopg imported on first use) -----------
# isort: split
from ._errors import LeaseLost as LeaseLost
from ._stores._postgres import Lease as Lease
from ._stores._postgres import NodeInfo as NodeInfo
from ._stores._postgres import PostgresStore as PostgresStore

# --- the server, the session value, the scripted provider -----------------------------
# isort: split
from ._follow import Follower as Follower
from ._follow import SessionRestarted as SessionRestarted
from ._providers._scripted import ScriptedCrash as ScriptedCrash
from ._providers._scripted import ScriptedProvider as ScriptedProvider
from ._providers._scripted import ScriptedReply as ScriptedReply
from ._providers._scripted import ScriptedSession as ScriptedSession
from ._providers._scripted import ScriptedTool as ScriptedTool
from ._server import ServerRef as ServerRef
from ._server import SessionServer as SessionServer
from ._server import SessionStatus as SessionStatus
from ._server import new_session_id as new_session_id
from ._session import Session as Session
from ._stored import SessionInfo as SessionInfo
from ._subscribers import Subscription as Subscription
from ._telemetry import configure_telemetry as configure_telemetry

# --- the Claude Code provider ---------------------------------------------------------
# isort: split
try:
    from ._providers._claude import ClaudeCode as ClaudeCode
    from ._providers._claude_session import ClaudeSession as ClaudeSession
    from ._providers._claude_store import ClaudeTranscriptStore as ClaudeTranscriptStore
    from ._providers._claude_store import claude_mirror_key as claude_mirror_key
except ImportError as _no_sdk:  # the claude extra (claude-agent-sdk) is not installed
    if not (_no_sdk.name or "").startswith("claude_agent_sdk"):
        raise
    from ._providers._claude_missing import ClaudeCode as ClaudeCode  # type: ignore[assignment]

# --- model providers, the agent loop, tools ---------------------------------------------
# isort: split
from ._errors import ToolError as ToolError
from ._loop import AgentLoop as AgentLoop
from ._loop import LoopSession as LoopSession
from ._providers._http_common import Price as Price
from ._providers._http_common import PriceTable as PriceTable
from ._providers._http_common import RetryPolicy as RetryPolicy
from ._providers._ollama import Ollama as Ollama
from ._providers._openai import OpenAICompatible as OpenAICompatible
from ._tools import Allow as Allow
from ._tools import CanUseTool as CanUseTool
from ._tools import Deny as Deny
from ._tools import Halt as Halt
from ._tools import HookEvent as HookEvent
from ._tools import HookMatcher as HookMatcher
from ._tools import Hooks as Hooks
from ._tools import PermissionMode as PermissionMode
from ._tools import PermissionRequest as PermissionRequest
from ._tools import Tool as Tool
from ._tools import ToolContext as ToolContext
from ._tools import Transform as Transform
from ._tools import builtin_tools as builtin_tools
from ._tools import tool as tool

# --- the cluster: sessions across nodes (sessions._cluster) -------------------------------
# isort: split
from ._cluster._node import ClusterNode as ClusterNode
from ._cluster._node import SessionFactory as SessionFactory
from ._cluster._node import rendezvous as rendezvous
from ._cluster._node import serve_node as serve_node
from ._errors import ClusterError as ClusterError
from ._errors import ClusterUnavailable as ClusterUnavailable
from ._errors import SessionElsewhere as SessionElsewhere

# isort: split
# One distribution (otpy-sessions) ships both packages, at one version.
from otpy import __version__ as __version__

from ._util import fixup_module_metadata as _fixup

_fixup(__name__, globals())
del _fixup
