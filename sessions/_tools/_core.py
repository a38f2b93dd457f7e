"""`Tool`, `ToolContext`, and tools made from plain typed async functions.

The JSON schema of a function's arguments is derived from its type hints by hand (a
few dozen lines for the types a model can fill in): the alternative, pydantic, is not a
dependency of `sessions`. The docstring's first paragraph describes the tool, and a
Google-style ``Args:`` section describes its parameters.
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Literal, overload

import attrs

from .._errors import InvalidOption, ToolError
from .._events import JSON, ToolCall
from .._providers._base import ToolSpec


@attrs.frozen
class ToolContext:
    """What a running tool knows: the session's confined ``cwd``, the session, the turn,
    and the call being served. A tool function receives it if it has a parameter
    annotated ``sessions.ToolContext`` (that parameter is not shown to the model).

    Example::

        @sessions.tool
        async def where(ctx: sessions.ToolContext) -> str:
            \"\"\"Say where the session works.\"\"\"
            return ctx.cwd
    """

    cwd: str
    session_id: str = ""
    turn: int = 0
    call: ToolCall | None = None


ToolFunction = Callable[..., Awaitable[Any]]


@attrs.frozen
class Tool:
    """A tool the agent loop can run: a name, a description, a JSON schema and a function.

    ``read_only`` tools run in ``plan`` mode and without asking in ``default`` mode;
    ``edits_files`` tools run without asking in ``accept_edits`` mode. Make one from an
    async function with `sessions.tool`; the built-in ones come from `builtin_tools`.

    Example::

        async def shout(text: str) -> str:
            \"\"\"Upper-case some text.\"\"\"
            return text.upper()

        shout_tool = sessions.Tool.from_function(shout, read_only=True)
    """

    name: str
    description: str
    parameters: dict[str, JSON]
    function: ToolFunction = attrs.field(repr=False)
    read_only: bool = False
    edits_files: bool = False
    context_parameter: str | None = None
    """The parameter that receives the `ToolContext`, if any."""
    enum_parameters: dict[str, type[enum.Enum]] = attrs.field(factory=dict, repr=False)
    """Parameters whose JSON value is converted to an enum member before the call."""

    @property
    def spec(self) -> ToolSpec:
        """The tool as the model sees it."""
        return ToolSpec(self.name, self.description, self.parameters)

    @classmethod
    def from_function(
        cls,
        function: ToolFunction,
        *,
        name: str | None = None,
        description: str | None = None,
        read_only: bool = False,
        edits_files: bool = False,
    ) -> Tool:
        """Make a tool from an ``async def`` with type hints and a docstring.

        Raises:
            InvalidOption: the function is not async, has no docstring (and no
                ``description``), or a parameter's type cannot be described in JSON.
        """
        return _from_function(function, name, description, read_only, edits_files)

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        """Check ``arguments`` against the schema, call the function, and return its text.

        Raises:
            ToolError: the arguments do not fit, or the tool raised it.
        """
        kwargs = _check_arguments(self, arguments)
        if self.context_parameter is not None:
            kwargs[self.context_parameter] = context
        value = await self.function(**kwargs)
        if isinstance(value, str):
            return value
        return json.dumps(value, default=str)


@overload
def tool(function: ToolFunction, /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, read_only: bool = False, edits_files: bool = False
) -> Callable[[ToolFunction], Tool]: ...


def tool(
    function: ToolFunction | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    read_only: bool = False,
    edits_files: bool = False,
) -> Tool | Callable[[ToolFunction], Tool]:
    """Turn a typed ``async def`` with a docstring into a `Tool` (a decorator).

    Parameters become the JSON schema's properties (``str``, ``int``, ``float``,
    ``bool``, ``list[...]``, ``dict[str, ...]``, ``Literal[...]``, enums, ``X | None``);
    those without a default are required. A parameter annotated `ToolContext` receives
    the context instead.

    Example::

        @sessions.tool(read_only=True)
        async def weather(city: str, unit: Literal["C", "F"] = "C") -> str:
            \"\"\"Today's weather in a city.

            Args:
                city: The city's name.
                unit: Celsius or Fahrenheit.
            \"\"\"
            return f"22 {unit} in {city}"
    """
    if function is not None:
        return Tool.from_function(function)

    def decorate(fn: ToolFunction) -> Tool:
        return Tool.from_function(fn, name=name, description=description, read_only=read_only, edits_files=edits_files)

    return decorate


# --- schema from type hints --------------------------------------------------------------

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    index = 0
    while index < len(lines) and not _ARGS_HEADER.match(lines[index]):
        summary.append(lines[index])
        index += 1
    current: str | None = None
    for line in lines[index + 1 :]:
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            break  # the next section (Returns:, Raises:)
        match = _ARG_LINE.match(line)
        if match and (line.startswith("    ") and not line.startswith("        ")):
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif current is not None and line.strip():
            params[current] += " " + line.strip()
    text = "\n".join(summary).strip()
    return text, params


def _schema(hint: Any, where: str) -> dict[str, JSON]:
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is str:
        return {"type": "string"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is type(None):
        return {"type": "null"}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _schema(options[0], where)
        return {"anyOf": [_schema(a, where) for a in args]}
    if origin in (list, collections.abc.Sequence, set, frozenset) or hint in (list, set):
        return {"type": "array", "items": _schema(args[0], where) if args else {}}
    if origin is tuple:
        item = args[0] if args and ((len(args) == 2 and args[1] is Ellipsis) or len(args) == 1) else Any
        return {"type": "array", "items": _schema(item, where)}
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        if args and args[0] is not str:
            raise InvalidOption(where, hint, "dict keys must be str (JSON objects have string keys)")
        return {"type": "object", "additionalProperties": _schema(args[1], where) if args else {}}
    raise InvalidOption(where, hint, "this type cannot be described as JSON for a model")


def _from_function(
    function: ToolFunction, name: str | None, description: str | None, read_only: bool, edits_files: bool
) -> Tool:
    tool_name = str(name or getattr(function, "__name__", ""))
    if not inspect.iscoroutinefunction(function):
        raise InvalidOption("tool", function, "a tool must be an async def (a sync function would block the loop)")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tool_name):
        raise InvalidOption("name", tool_name, "tool names are 1-64 letters, digits, _ or -")
    summary, documented = _parse_docstring(function.__doc__ or "")
    text = description or summary
    if not text:
        raise InvalidOption("tool", tool_name, "a tool needs a docstring (or a description) for the model to read")
    try:
        hints = typing.get_type_hints(function)
    except Exception as exc:
        raise InvalidOption("tool", tool_name, f"cannot read its type hints: {exc}") from exc
    properties: dict[str, JSON] = {}
    required: list[str] = []
    enums: dict[str, type[enum.Enum]] = {}
    context_parameter = None
    for parameter in inspect.signature(function).parameters.values():
        hint = hints.get(parameter.name, Any)
        if hint is ToolContext:
            context_parameter = parameter.name
            continue
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise InvalidOption("tool", tool_name, f"*{parameter.name} cannot be described to a model")
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise InvalidOption("tool", tool_name, f"{parameter.name} is positional-only; tools are called by name")
        schema = _schema(hint, f"{tool_name}.{parameter.name}")
        enum_type = _enum_of(hint)
        if enum_type is not None:
            enums[parameter.name] = enum_type
        if parameter.name in documented:
            schema["description"] = documented[parameter.name]
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
        elif parameter.default is not None and isinstance(parameter.default, str | int | float | bool):
            schema["default"] = parameter.default
        properties[parameter.name] = schema
    parameters: dict[str, JSON] = {"type": "object", "properties": properties, "required": required}
    parameters["additionalProperties"] = False
    return Tool(tool_name, text, parameters, function, read_only, edits_files, context_parameter, enums)


def _enum_of(hint: Any) -> type[enum.Enum] | None:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if isinstance(a, type) and issubclass(a, enum.Enum)]
        return found[0] if len(found) == 1 else None
    return None


# --- checking the model's arguments ------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    if "enum" in schema:
        return value in schema["enum"]
    if "anyOf" in schema:
        return any(_fits(value, s) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind is None:
        return True
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if not isinstance(value, _TYPES.get(kind, (object,))):
        return False
    if isinstance(value, list) and "items" in schema:
        return all(_fits(item, schema["items"]) for item in value)
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return all(_fits(item, schema["additionalProperties"]) for item in value.values())
    return True


def _check_arguments(tool: Tool, arguments: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = tool.parameters.get("properties") or {}
    required = tool.parameters.get("required") or []
    missing = [name for name in required if name not in arguments]
    if missing:
        raise ToolError(f"invalid arguments for {tool.name}: missing {', '.join(missing)}")
    unknown = [name for name in arguments if name not in properties]
    if unknown and tool.parameters.get("additionalProperties") is False:
        raise ToolError(f"invalid arguments for {tool.name}: unknown {', '.join(unknown)}")
    for name, value in arguments.items():
        schema = properties.get(name)
        if schema is not None and value is not None and not _fits(value, schema):
            expected = schema.get("type") or schema.get("enum") or "a valid value"
            raise ToolError(f"invalid arguments for {tool.name}: {name}={value!r} is not {expected}")
    kwargs = dict(arguments)
    for name, kind in tool.enum_parameters.items():
        if name in kwargs and kwargs[name] is not None:
            kwargs[name] = kind(kwargs[name])
    return kwargs
