"""otpy: Erlang/OTP supervision trees for Python, on trio."""

from ._child_spec import ChildSpec as ChildSpec
from ._dynamic_supervisor import DynamicSupervisor as DynamicSupervisor
from ._dynamic_supervisor import DynamicSupervisorSpec as DynamicSupervisorSpec
from ._exceptions import AlreadyPresent as AlreadyPresent
from ._exceptions import AlreadyRegistered as AlreadyRegistered
from ._exceptions import AlreadyStarted as AlreadyStarted
from ._exceptions import CallError as CallError
from ._exceptions import CallingSelf as CallingSelf
from ._exceptions import CallTimeout as CallTimeout
from ._exceptions import ChildNotFound as ChildNotFound
from ._exceptions import ChildRestarting as ChildRestarting
from ._exceptions import ChildRunning as ChildRunning
from ._exceptions import InvalidChildSpec as InvalidChildSpec
from ._exceptions import InvalidSupervisorFlags as InvalidSupervisorFlags
from ._exceptions import MaxChildren as MaxChildren
from ._exceptions import NoProcess as NoProcess
from ._exceptions import NotInTrioRun as NotInTrioRun
from ._exceptions import OtpError as OtpError
from ._exceptions import ProcessCrashed as ProcessCrashed
from ._exceptions import ProcessExit as ProcessExit
from ._exceptions import ServerExited as ServerExited
from ._exceptions import StartError as StartError
from ._exceptions import SupervisorError as SupervisorError
from ._exceptions import UnhandledMessage as UnhandledMessage
from ._gen_server import TIMEOUT as TIMEOUT
from ._gen_server import GenServer as GenServer
from ._gen_server import Ignore as Ignore
from ._gen_server import InactivityTimeout as InactivityTimeout
from ._gen_server import NoReply as NoReply
from ._gen_server import Reply as Reply
from ._gen_server import StartIgnored as StartIgnored
from ._gen_server import Stop as Stop
from ._gen_server import get_state as get_state
from ._gen_server import is_normal_reason as is_normal_reason
from ._gen_server import stop as stop
from ._gen_server import unhandled as unhandled
from ._process import Call as Call
from ._process import Down as Down
from ._process import ExitSignal as ExitSignal
from ._process import From as From
from ._process import MonitorRef as MonitorRef
from ._process import Pid as Pid
from ._process import Via as Via
from ._process import ViaRegistry as ViaRegistry
from ._process import call as call
from ._process import cast as cast
from ._process import current_process as current_process
from ._process import demonitor as demonitor
from ._process import exit as exit  # noqa: A004 (Elixir's Process.exit/2)
from ._process import link as link
from ._process import monitor as monitor
from ._process import registered as registered
from ._process import reply as reply
from ._process import self as self
from ._process import send as send
from ._process import trap_exit as trap_exit
from ._process import unlink as unlink
from ._process import via as via
from ._process import whereis as whereis
from ._supervisor import ChildCounts as ChildCounts
from ._supervisor import ChildInfo as ChildInfo
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorSpec as SupervisorSpec

# --- Registry, timers, Agent (issue 4) -------------------------------------------------
# isort: split
from ._agent import Agent as Agent
from ._registry import Registry as Registry
from ._timers import TimerRef as TimerRef
from ._timers import cancel_timer as cancel_timer
from ._timers import read_timer as read_timer
from ._timers import send_after as send_after

# --- Task, Task.Supervisor, the application entry point, the tree view (issue 4) ------
# isort: split
from ._application import ApplicationExited as ApplicationExited
from ._application import run as run
from ._application import serve as serve
from ._log import get_logger as get_logger
from ._restarts import ChildRestarted as ChildRestarted
from ._restarts import add_restart_listener as add_restart_listener
from ._restarts import remove_restart_listener as remove_restart_listener
from ._slow import SlowCallbacks as SlowCallbacks
from ._task import Task as Task
from ._task import TaskExit as TaskExit
from ._task import TaskExited as TaskExited
from ._task import TaskOk as TaskOk
from ._task import TaskReply as TaskReply
from ._task import TaskStream as TaskStream
from ._task import TaskSupervisor as TaskSupervisor
from ._task import TaskTimeout as TaskTimeout
from ._tree import TreeNode as TreeNode
from ._tree import tree as tree
from ._util import fixup_module_metadata as _fixup
from ._version import __version__ as __version__

_fixup(__name__, globals())
del _fixup
