"""Sphinx configuration for the otpy and sessions documentation site.

Sphinx + MyST + furo, as attrs and structlog build theirs: the pages stay Markdown that
reads well on a forge, and the API reference comes from the docstrings (Google style,
through napoleon). ``nox -s docs`` builds it with ``-n -W --keep-going``.

The API pages do not list names by hand. The ``public-api`` directive below documents
every public name of a package's namespace (``vars(package)``, names without a leading
underscore), so a name added to ``otpy/__init__.py`` or ``sessions/__init__.py`` appears
in the reference with no edit here; and a consistency check fails the build if any
public name ends up without an entry.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
import sys
import types
from typing import Any

import attrs
import sphinxcontrib.mermaid as sphinx_mermaid
from docutils import nodes  # type: ignore[import-untyped]
from docutils.statemachine import StringList  # type: ignore[import-untyped]
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.ext import napoleon
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.inspect import object_description
from sphinx.util.nodes import find_pending_xref_condition

import otpy

project = "otpy"
author = "the otpy authors"
copyright = "the otpy authors"  # noqa: A001 (Sphinx's name)
release = otpy.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib.mermaid",
]

root_doc = "index"
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", ".venv", "**/.ipynb_checkpoints"]

# --- MyST --------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
# GitHub-style anchors (#terminate-and-trap_exit) for every heading down to ####, so the
# pages' in-page and cross-page links work on the site as on the forge.
myst_heading_anchors = 4
# ```mermaid fences become the mermaid directive.
myst_fence_as_directive = ["mermaid"]

# --- autodoc / napoleon --------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = (
    "signature"  # parameter types in the signature, next to their defaults
)
# A signature longer than a code line puts each parameter on a line of its own.
python_maximum_signature_line_length = 88
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Fields come from autodoc (undoc-members); napoleon's "Attributes:" become :ivar: fields, so a
# field is not described twice.
napoleon_use_ivar = True
# Docstrings write `Name` for a cross-reference (trio's habit): resolve it as any Python object.
default_role = "py:obj"
add_module_names = False
python_use_unqualified_type_names = True

# --- warnings -------------------------------------------------------------------------------
# The build runs nitpicky (-n). No intersphinx: the build must work offline, so names from
# the standard library and from trio, attrs, outcome and structlog are left unlinked, and
# only those are forgiven; a broken reference to otpy or sessions is still an error.
nitpicky = True
_EXTERNAL = (
    r"(builtins|typing|contextlib|typing_extensions|collections|collections\.abc|abc|enum|types|"
    r"contextvars|datetime|pathlib|os|signal|math|time|claude_agent_sdk|openai|ollama|anyio|functools|asyncio|concurrent\.futures|"
    r"trio|trio\.[\w.]+|attrs|attr|outcome|structlog|httpx|sqlite3|json|starlette|hypercorn)"
)
_BUILTINS = (
    r"(object|type|int|float|str|bytes|bool|None|NoneType|list|dict|tuple|set|frozenset|"
    r"Exception|BaseException|BaseExceptionGroup|ExceptionGroup|ValueError|TypeError|KeyError|"
    r"LookupError|RuntimeError|TimeoutError|OSError|NotImplementedError|"
    r"Any|Callable|Awaitable|Coroutine|Iterable|Iterator|AsyncIterator|AsyncIterable|"
    r"AsyncGenerator|Mapping|Sequence|MutableMapping|Hashable|Literal|Generic|Protocol|"
    r"TypeVar|ParamSpec|Self|Never|NoReturn|ClassVar|Final|Optional|Union|TypeAlias|"
    r"P|T|R|S|K|V|T_co|R_co|Nursery|TaskStatus|CancelScope|MemorySendChannel|"
    r"MemoryReceiveChannel|Event|Outcome|Value|Error|BoundLogger|Path|timedelta|"
    r"P\.args|P\.kwargs|ellipsis|EllipsisType)"
)
nitpick_ignore_regex = [
    (r"py:.*", rf"{_EXTERNAL}(\..*)?"),
    (r"py:.*", _BUILTINS),
]

# --- HTML ------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"otpy {release}"
html_static_path = ["_static"]
html_css_files = ["otpy.css"]  # wide tables scroll instead of being squeezed
html_show_sourcelink = False

# --- Mermaid, offline ----------------------------------------------------------------------------
# The site carries Mermaid itself (docs/vendor_mermaid.py puts it in _static/mermaid/, from
# the npm registry): no CDN, so diagrams draw offline and under a strict Content-Security-
# Policy. sphinxcontrib-mermaid imports Mermaid as an ES module; an import of a file is
# refused on a page opened from file://, so the vendored single-file build is loaded as a
# plain script on the pages with diagrams (add_mermaid_script), and the module the
# extension imports only hands over the global it defines.
mermaid_use_local = "data:text/javascript,export default globalThis.mermaid;"
# The default button, "\u26f6", is missing from common fonts and shows as an empty box.
mermaid_fullscreen_button = "\u2922"

# --- links ---------------------------------------------------------------------------------------
# The html build checks every internal link: MyST warns on a link to a missing page or
# #anchor. `sphinx-build -b linkcheck` checks the external ones where there is network.
linkcheck_anchors = False


# --- the public-api directive -------------------------------------------------------------------

PACKAGES = ("otpy", "sessions")

GROUPS = (
    ("classes", "Classes"),
    ("functions", "Functions"),
    ("errors", "Errors"),
    ("data", "Constants and type aliases"),
)


def public_names(package: str) -> dict[str, Any]:
    """The public namespace of a package or of one of its public submodules."""
    module = importlib.import_module(package)
    names = {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_") and not isinstance(obj, types.ModuleType)
    }
    if package in PACKAGES:  # a curated namespace of re-exports (``X as X``)
        return names
    # A public submodule (sessions.testing): its __all__, or what it defines itself; not
    # what it imports (Sequence, Any).
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return {name: getattr(module, name) for name in exported}
    return {
        name: obj
        for name, obj in names.items()
        if getattr(obj, "__module__", None) == package
        or (name.isupper() and not hasattr(obj, "__module__"))
    }


def public_modules(package: str) -> list[str]:
    """The package and its public submodules (``sessions.testing``), each with its own names."""
    module = importlib.import_module(package)
    submodules = [
        f"{package}.{info.name}"
        for info in pkgutil.iter_modules(getattr(module, "__path__", []))
        if not info.name.startswith("_")
    ]
    return [package, *sorted(submodules)]


def kind_of(obj: object) -> str:
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return "errors"
    if isinstance(obj, type):
        return "classes"
    if (
        inspect.isfunction(obj)
        or inspect.isbuiltin(obj)
        or inspect.iscoroutinefunction(obj)
    ):
        return "functions"
    return "data"


# Members inherited from these are not repeated on a subclass's entry.
_NOT_INHERITED = (
    "object, Generic, Protocol, tuple, list, dict, set, frozenset, str, bytes, int, float, "
    "Enum, StrEnum, IntEnum, Flag, Exception, BaseException, Sequence, MutableSequence, Mapping, MutableMapping, "
    "Set, MutableSet, Collection, Container, Iterable, Iterator, Sized, Reversible, "
    "Instrument"  # SlowCallbacks: trio's other hooks, with trio's docstrings, are not otpy's
)


def inherited_stop(cls: Any) -> str:
    """Inherited members to show: those of the class's own package's private bases.

    A sessions class derived from `otpy.GenServer` does not repeat GenServer's methods:
    they are on GenServer's entry.
    """
    package = cls.__module__.split(".")[0]
    foreign = [
        base.__name__
        for base in cls.__mro__[1:]
        if base.__module__.split(".")[0] in PACKAGES
        and base.__module__.split(".")[0] != package
    ]
    return ", ".join([_NOT_INHERITED, *foreign])


def directive_for(package: str, name: str, obj: object) -> list[str]:
    target = f"{package}.{name}"
    kind = kind_of(obj)
    if kind == "classes":
        # Members inherited from otpy's private bases (start_link, child_spec, ...) belong to
        # the public class; those of object and of the typing machinery do not.
        lines = [
            f".. autoclass:: {target}",
            f"   :inherited-members: {inherited_stop(obj)}",
        ]
        if public_bases(obj) == [object]:  # "Bases: object" says nothing
            lines.append("   :no-show-inheritance:")
        return [*lines, ""]
    if kind == "errors":
        return [f".. autoclass:: {target}", ""]
    if kind == "functions":
        return [f".. autofunction:: {target}", ""]
    return [f".. autodata:: {target}", "   :no-value:", ""]


class PublicApi(SphinxDirective):
    """``.. public-api:: otpy``: every public name of the package, grouped by kind."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        lines: list[str] = []
        for module in public_modules(self.arguments[0]):
            names = public_names(module)
            lines += [
                f".. py:module:: {module}",
                "",
                f".. currentmodule:: {module}",
                "",
            ]
            for kind, title in GROUPS:
                members = sorted(
                    name for name, obj in names.items() if kind_of(obj) == kind
                )
                if not members:
                    continue
                heading = f"{module}: {title.lower()}"
                lines += [heading, "-" * len(heading), ""]
                for name in members:
                    lines += directive_for(module, name, names[name])
        container = nodes.section()
        container.document = self.state.document
        source = f"<public-api {self.arguments[0]}>"
        self.state.nested_parse(
            StringList(lines, source=source), 0, container, match_titles=True
        )
        children: list[nodes.Node] = container.children
        return children


def check_every_public_name_is_documented(app: Sphinx, env: BuildEnvironment) -> None:
    """Fail the build (a warning, under -W) when a public name has no entry in the reference."""
    documented = set(env.domains["py"].objects)
    for package in PACKAGES:
        for module in public_modules(package):
            for name in public_names(module):
                if f"{module}.{name}" not in documented:
                    logging.getLogger(__name__).warning(
                        "public name %s.%s is missing from the API reference",
                        module,
                        name,
                        type="otpy",
                        subtype="api",
                    )


def _private_modules() -> list[types.ModuleType]:
    return [
        module
        for name, module in sorted(sys.modules.items())
        if name.split(".")[0] in PACKAGES
        and any(part.startswith("_") for part in name.split(".")[1:])
    ]


def _private_type_names() -> set[str]:
    """Type aliases and type variables that the packages use in annotations but do not export.

    ``Restart``, ``ShutdownSpec``, ``R``...: they render as plain text, since there is no
    page to link them to. Anything else that does not resolve is still an error.
    """
    for package in PACKAGES:
        importlib.import_module(package)
    public = {id(obj) for package in PACKAGES for obj in public_names(package).values()}
    names = set()
    for module in _private_modules():
        for name, obj in vars(module).items():
            if name.startswith("__") or id(obj) in public or inspect.ismodule(obj):
                continue
            if inspect.isroutine(obj):
                continue
            alias_types = {"typing", "types", "typing_extensions", "collections.abc"}
            is_alias = (
                obj is Any
                or type(obj).__module__ in alias_types
                or isinstance(obj, str)
            )
            if is_alias or isinstance(
                obj, type
            ):  # a private class (ServerBase, _Any) has no page either
                names.update({name, f"{module.__name__}.{name}"})
    return names


nitpick_ignore = [
    (role, name)
    for name in sorted(_private_type_names())
    for role in ("py:class", "py:obj", "py:data")
]


def hide_private_bases(
    app: Sphinx, name: str, obj: object, options: object, bases: list[type]
) -> None:
    """Show a class's public ancestors in "Bases:", skipping otpy's private base classes."""
    bases[:] = public_ancestors(bases)


def public_bases(cls: type) -> list[type]:
    """What "Bases:" shows for ``cls`` (``[object]`` when it has no other public base)."""
    return public_ancestors(list(getattr(cls, "__orig_bases__", cls.__bases__)))


def public_ancestors(bases: list[type]) -> list[type]:
    def public(base: type) -> list[type]:
        if not isinstance(base, type):  # a subscripted generic (Generic[T]): its origin
            base = getattr(base, "__origin__", object)
        private = base.__module__.split(".")[0] in PACKAGES and (
            base.__name__.startswith("_")
            or base.__name__ not in public_names(base.__module__.split(".")[0])
        )
        if not private:
            return [base]
        return [ancestor for parent in base.__bases__ for ancestor in public(parent)]

    replaced = [ancestor for base in bases for ancestor in public(base)]
    return list(dict.fromkeys(b for b in replaced if b is not object)) or [object]


_SUBSCRIPTED = re.compile(r"^(~?[\w.]+)(\[.*\]|\(.*\))$")


def resolve_written_forms(
    app: Sphinx, env: BuildEnvironment, node: Any, contnode: nodes.Element
) -> Any:
    """Resolve the short forms docstrings use, where the Python domain's own lookup fails.

    - `Call[R]` and `via(...)` link to `Call` and `via`;
    - a bare public name (`Stop`, `Down`) links to the package that exports it, also when
      the docstring is shown on another package's page (an otpy method inherited by a
      sessions class);
    - a bare member name (`start_link`, `load`) links to the member of that name whose
      class the others derive from (`GenServer.start_link`), or, among unrelated classes,
      to the one on a Protocol (`Store.load`).
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    match = _SUBSCRIPTED.match(target)
    if match is not None:
        target = match.group(1)
    domain = env.domains["py"]
    for candidate in [target, *_qualified(target, domain.objects)]:
        if candidate == node.get("reftarget"):
            continue
        found = domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], candidate, node, contnode
        )
        if found is not None:
            return found
    return None


def _qualified(target: str, objects: dict[str, Any]) -> list[str]:
    head = target.split(".")[0]
    exported = [
        f"{package}.{target}" for package in PACKAGES if head in public_names(package)
    ]
    if exported:
        return exported
    if "." in target:
        return []
    members = [
        name for name in objects if name.endswith(f".{target}") and name.count(".") >= 2
    ]
    owners = {name: _import_owner(name.rsplit(".", 1)[0]) for name in members}
    classes = [owner for owner in owners.values() if isinstance(owner, type)]

    def rank(name: str) -> tuple[int, bool, str]:
        owner = owners[name]
        if not isinstance(owner, type):
            return (-1, False, name)
        derived = sum(
            1 for other in classes if other is not owner and owner in other.__mro__
        )
        return (derived, bool(getattr(owner, "_is_protocol", False)), name)

    return sorted(members, key=rank, reverse=True)[:1]


def _import_owner(dotted: str) -> object:
    module, _, rest = dotted.partition(".")
    obj: object = importlib.import_module(module)
    for part in rest.split("."):
        obj = getattr(obj, part, None)
    return obj


class UnlinkBuiltins(SphinxPostTransform):
    """Builtin names (``type``, ``int``) in annotations stay plain text.

    Without intersphinx they have no target, and the Python domain's fuzzy search would
    otherwise link ``type`` to an attribute that happens to be called ``type``.
    """

    default_priority = 5  # before the references are resolved

    def run(self, **kwargs: Any) -> None:
        for node in list(self.document.findall(addnodes.pending_xref)):
            if (
                node.get("refdomain") == "py"
                and node.get("reftarget") in _BUILTIN_NAMES
            ):
                condition = find_pending_xref_condition(node, "*")
                node.replace_self((condition or node).children)


_BUILTIN_NAMES = frozenset(name for name in dir(builtins) if not name.startswith("_"))


def _napoleon(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """napoleon, except that a property's first sentence is not read as "type: description".

    otpy writes types in annotations only, so "The shutdown spec with defaults applied: ..."
    is prose; napoleon would render "The shutdown spec with defaults applied" as its type.
    """
    if (
        what in {"attribute", "property", "data"}
        and lines
        and re.match(r"^\S+(\s+\S+){2,}:\s", lines[0])
    ):
        what = "method"
    napoleon._process_docstring(app, what, name, obj, options, lines)  # type: ignore[arg-type]


def link_outside_files_as_text(app: Sphinx, docname: str, source: list[str]) -> None:
    """A page's link to a repository file outside docs/ (``../bench/README.md``) becomes text.

    The link works where the Markdown is read in the repository; the site has no such page.
    """
    source[0] = _OUTSIDE_LINK.sub(lambda m: m.group(1), source[0])


_OUTSIDE_LINK = re.compile(r"\[([^\]]+)\]\(\.\./[^)\s]*\)")


_CODE_NAME = re.compile(r"^((?:otpy|sessions)(?:\.[A-Za-z_]\w*)+)(?:\(.*\)|\[.*\])?$")


def _resolves(dotted: str) -> bool:
    obj: object = importlib.import_module(dotted.split(".")[0])
    for part in dotted.split(".")[1:]:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return not isinstance(obj, types.ModuleType)


def link_code_names(app: Sphinx, doctree: nodes.document) -> None:
    """Inline code that names a public object (`otpy.call`, `otpy.Stop(reason)`) links to its entry.

    The concept pages stay plain Markdown, where `otpy.call` is code; on the site each
    such name becomes a link into the API reference. Logger names (`otpy.supervisor`)
    and anything else that is not a public object stay plain code.
    """
    for literal in list(doctree.findall(nodes.literal)):
        if (
            isinstance(literal.parent, (nodes.reference, addnodes.pending_xref))
            or "xref" in literal["classes"]
        ):
            continue
        match = _CODE_NAME.match(literal.astext())
        if match is None or not _resolves(match.group(1)):
            continue
        xref = addnodes.pending_xref(
            "",
            refdomain="py",
            reftype="obj",
            reftarget=match.group(1),
            refdoc=app.env.docname,
            refexplicit=True,
            refwarn=True,
        )
        literal.replace_self(xref)
        xref += literal


def add_mermaid_script(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    """Load the vendored Mermaid on the pages that have a diagram (see the Mermaid section)."""
    # As the extension does: pages without a doctree (search, the index) get the script too.
    if doctree is None or any(True for _ in doctree.findall(sphinx_mermaid.mermaid)):
        app.add_js_file("mermaid/mermaid.min.js", priority=400)


def _resolve_local_url(url: str, context: dict[str, Any]) -> str:
    """sphinxcontrib-mermaid's resolver, letting a ``data:`` module through unchanged."""
    return url if url.startswith("data:") else _mermaid_resolve(url, context)


_mermaid_resolve = sphinx_mermaid._resolve_local_url
sphinx_mermaid._resolve_local_url = _resolve_local_url


def render_attrs_defaults(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """Show an attrs class's defaults as values, not as ``attr_dict['name'].default``.

    attrs writes the defaults of its generated ``__init__`` that way, and
    autodoc_preserve_defaults shows the source text; here the real value is shown instead
    (a ``factory`` default as the factory's call, ``list()``).
    """
    if signature is None or "attr_dict[" not in signature or not attrs.has(obj):
        return None
    fields = {field.name: field for field in attrs.fields(obj)}

    def value(match: re.Match[str]) -> str:
        field = fields.get(match.group(1))
        if field is None:
            return match.group(0)
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            return f"{getattr(default.factory, '__name__', 'factory')}()"
        return object_description(default)

    return _ATTR_DEFAULT.sub(value, signature), annotation


_ATTR_DEFAULT = re.compile(r"attr_dict\['(\w+)'\]\.default")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("public-api", PublicApi)
    app.connect("html-page-context", add_mermaid_script)
    app.connect("autodoc-process-signature", render_attrs_defaults)
    app.connect("env-check-consistency", check_every_public_name_is_documented)
    app.connect("autodoc-process-bases", hide_private_bases)
    app.connect("missing-reference", resolve_written_forms)
    app.connect("source-read", link_outside_files_as_text)
    app.connect("doctree-read", link_code_names)
    app.add_post_transform(UnlinkBuiltins)
    for listener in list(app.events.listeners["autodoc-process-docstring"]):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)
    app.connect("autodoc-process-docstring", _napoleon)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
