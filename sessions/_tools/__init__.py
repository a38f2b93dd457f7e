"""Tools for the agent loop: the built-ins (confined to ``cwd``), tools from typed
functions, permissions and hooks."""

from ._builtin import DEFAULT_MAX_OUTPUT as DEFAULT_MAX_OUTPUT
from ._builtin import builtin_tools as builtin_tools
from ._builtin import confine as confine
from ._builtin import run_command as run_command
from ._core import Tool as Tool
from ._core import ToolContext as ToolContext
from ._core import tool as tool
from ._policy import PERMISSION_MODES as PERMISSION_MODES
from ._policy import Allow as Allow
from ._policy import CanUseTool as CanUseTool
from ._policy import Deny as Deny
from ._policy import Halt as Halt
from ._policy import HookEvent as HookEvent
from ._policy import HookMatcher as HookMatcher
from ._policy import Hooks as Hooks
from ._policy import PermissionMode as PermissionMode
from ._policy import PermissionRequest as PermissionRequest
from ._policy import Transform as Transform
from ._policy import check_mode as check_mode
from ._policy import check_permission as check_permission
