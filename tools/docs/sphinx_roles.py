"""A griffe extension that makes conngrpc's Sphinx-style docstrings render in mkdocstrings.

conngrpc's docstrings are written for Sphinx: roles (:class:`Pool`, :meth:`Pool.channel`),
``:raises X:`` fields, ``#:`` comments as attribute docstrings and ``::`` literal blocks.
Rendered as they are, the roles would show as literal text. Once the package is loaded,
this extension:

- turns each role into an autorefs cross-reference, ``[`Pool`][conngrpc.Pool]``, its
  target resolved in the docstring's scope (as Python would) and then to the public path
  when the name is exported (``conngrpc.pool.pool.Pool`` is documented as
  ``conngrpc.Pool``). A name outside conngrpc (``ValueError``, ``grpc.aio.Channel``)
  becomes plain code: the site loads no other site's inventory. It is checked first: its
  module imported and the rest walked as attributes; one that names nothing there logs a
  warning (``grpc.aio.Chanel``), which fails the strict build, and one whose module does
  not import here (an optional dependency) is taken as written. A conngrpc name that
  resolves to nothing stays a reference to itself, which autorefs reports as
  unresolved: the strict build fails on it too;
- links the exception of each ``:raises X:`` field the same way;
- turns each ``::`` literal block into a fenced code block;
- reads ``#:`` comments above an attribute as its docstring (Sphinx autodoc's form), and
  shows no value for one set in ``__init__`` (its value there is a parameter's name);
- hides a member whose docstring says ``:meta private:`` (autodoc's form again): public by
  name for conngrpc's own use, not part of the API;
- leaves out of "Bases:" a base class that conngrpc does not export (``Declared``);
- spells out, in the annotations of what the reference renders (parameters, returns,
  attributes), each type alias that conngrpc does not export (``Strategy`` becomes
  ``Literal['one_for_one', ...]``): a reader could not look the alias's name up. The other
  names stay names, so they still link.

Listed in mkdocs.yml under the Python handler's ``extensions``.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib.util
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import griffe

sys.path.insert(0, str(Path(__file__).parent))

from public_api import PUBLIC_MODULES

__all__ = [
    "PublicNames",
    "SphinxRoles",
    "convert_docstring",
    "convert_roles",
    "expand_annotations",
    "expand_private_aliases",
    "missing_external",
    "target_of",
]


#: A role's target resolved outside conngrpc: shown as code, not linked.
EXTERNAL = ""

_ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|exc|data|const|obj|mod):`([^`]+)`")
_CALLABLE_ROLES = ("meth", "func")
_TITLED = re.compile(r"(.*?\S)\s*<([^<>]+)>", re.DOTALL)
_META_PRIVATE = re.compile(r"^[ \t]*:meta private:[ \t]*\n?", re.MULTILINE)

#: What a role's target resolves to: an autorefs identifier, EXTERNAL, or None (unknown).
Resolver = Callable[[str], "str | None"]


def convert_roles(text: str, resolve: Resolver) -> str:
    """``text`` with every Sphinx role made a markdown cross-reference or code span.

    ``~`` shows the last part of the target alone, ``!`` leaves it unlinked,
    ``title <target>`` shows the title, and a method or function is shown with ``()``
    (a target written with them is looked up without), as Sphinx does. A target ``resolve`` does not
    know is linked to itself, so that autorefs reports it.
    """

    def replace(match: re.Match[str]) -> str:
        role, target = match.group(1), match.group(2).strip()
        titled = _TITLED.fullmatch(target)  # "the pool <Pool>": a title of its own
        if titled is not None:
            shown, target = titled.group(1), titled.group(2).strip()
        unlinked = target.startswith("!")
        short = target.startswith("~")
        target = target.lstrip("!~")
        if role in _CALLABLE_ROLES:
            target = target.removesuffix("()")
        if titled is None:
            shown = target.rsplit(".", 1)[-1] if short else target
            if role in _CALLABLE_ROLES:
                shown += "()"
        if unlinked:
            return f"`{shown}`"
        identifier = resolve(target)
        if identifier == EXTERNAL:
            return f"`{shown}`"
        return f"[`{shown}`][{identifier or target}]"

    return _ROLE.sub(replace, text)


def convert_docstring(text: str, resolve: Resolver) -> str:
    """A Sphinx docstring as mkdocstrings' markdown: roles converted, ``::`` literal blocks
    fenced (roles inside them left alone), ``:meta private:`` dropped."""
    text = _META_PRIVATE.sub("", text)
    out: list[str] = []
    for literal, chunk in _literal_blocks(text):
        if literal:
            code = textwrap.dedent(chunk).strip("\n")
            out.append(f"```{_language(code)}\n{code}\n```\n")
        else:
            out.append(convert_roles(chunk, resolve))
    return "".join(out)


def _literal_blocks(text: str) -> Iterator[tuple[bool, str]]:
    """``text`` in pieces: (False, prose) and (True, the indented block after a ``::``)."""
    lines = text.splitlines(keepends=True)
    prose: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.rstrip()
        if not stripped.endswith("::"):
            prose.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        block: list[str] = []
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
        ):
            block.append(lines[j])
            j += 1
        if not "".join(block).strip():  # a "::" that opens no block: plain text
            prose.append(line)
            i += 1
            continue
        # "Example::" reads "Example:"; a "::" alone or after a space disappears.
        head = stripped[:-2].rstrip() if stripped[:-2].endswith(" ") else stripped[:-1]
        if head.strip():
            prose.append(head + "\n")
        prose.append("\n")
        yield False, "".join(prose)
        code = _rstrip_blank(block)
        yield True, "".join(code)
        prose = block[len(code) :]
        i = j
    if prose:
        yield False, "".join(prose)


def _rstrip_blank(lines: list[str]) -> list[str]:
    """``lines`` without the blank lines at their end."""
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def _language(code: str) -> str:
    """``python`` for code that parses as Python, else ``text``."""
    try:
        ast.parse(code)
    except SyntaxError:
        return "text"
    return "python"


def missing_external(path: str) -> str | None:
    """Why a dotted path outside conngrpc (``grpc.aio.Channel``, ``ValueError``) names
    nothing, found by importing its longest module and walking the rest as attributes;
    None when it names something, or cannot be checked here (its module, or one that
    module needs, is not installed: an optional dependency's name is taken as written)."""
    parts = path.split(".")
    found: object = builtins
    walked = 0
    if parts[0] not in vars(builtins):
        for end in range(len(parts), 0, -1):
            module = ".".join(parts[:end])
            try:
                found = importlib.import_module(module)
            except ModuleNotFoundError as error:
                missing = error.name or ""
                if module == missing or module.startswith(missing + "."):
                    continue  # no module by that name: a shorter one, then attributes
                return None  # it needs a module not installed here
            except Exception:  # a module that does not import here
                return None
            walked = end
            break
        else:
            return None  # not installed here
    for index in range(walked, len(parts)):
        name = parts[index]
        if hasattr(found, name):
            found = getattr(found, name)
        elif _instance_attribute(found, name):
            return None  # set on instances: nothing further to walk
        else:
            owner = ".".join(parts[:index]) or "builtins"
            return f"{owner} has no attribute {name!r}"
    return None


def _instance_attribute(cls: object, name: str) -> bool:
    """Whether ``name`` is declared for a class's instances (annotated, or a slot)."""
    if not isinstance(cls, type):
        return False
    for klass in cls.__mro__:
        slots = vars(klass).get("__slots__", ())
        if name in vars(klass).get("__annotations__", {}) or name in (
            (slots,) if isinstance(slots, str) else slots
        ):
            return True
    return False


def target_of(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    """The object itself, or the one an alias (an import) finally stands for."""
    return obj.final_target if isinstance(obj, griffe.Alias) else obj


class PublicNames:
    """Where each public name of conngrpc lives, and how a role's target resolves to one."""

    def __init__(
        self, collection: griffe.ModulesCollection, modules: tuple[str, ...] = PUBLIC_MODULES
    ) -> None:
        self.collection = collection
        #: the public modules, in the order a short name is looked up; the package first
        self.modules = modules
        #: the package's name ("conngrpc")
        self.package = modules[0].split(".", 1)[0]
        #: canonical path -> public path, the first public module that exports it winning
        self.public: dict[str, str] = {}
        #: public module -> the names its ``__all__`` exports
        self.exports: dict[str, list[str]] = {}
        for module_path in modules:
            module = collection[module_path]
            names = [str(name) for name in module.exports or ()]
            self.exports[module_path] = names
            for name in names:
                member = module.members[name]
                canonical = target_of(member).path
                self.public.setdefault(canonical, f"{module_path}.{name}")

    def public_path(self, canonical: str) -> str | None:
        """The public path of a canonical one (a member of an exported class included)."""
        parts = canonical.split(".")
        for end in range(len(parts), 0, -1):
            public = self.public.get(".".join(parts[:end]))
            if public is not None:
                return ".".join([public, *parts[end:]])
        return None

    def resolve(self, target: str, scope: griffe.Object) -> str | None:
        """A role's target, seen from ``scope``: its public path (else its canonical one),
        EXTERNAL when it is not conngrpc's, or None when it is nothing known."""
        head, _, rest = target.partition(".")
        path: str | None = None
        if head == self.package:
            path = target
        else:
            try:
                path = scope.resolve(head)
            except griffe.NameResolutionError:
                path = self._exported(head, scope)
            if path is not None and rest:
                path = f"{path}.{rest}"
        if path is None:
            # neither a name of the docstring's module nor an exported one: a builtin, or a
            # dotted path from a top-level module
            if head not in vars(builtins) and importlib.util.find_spec(head) is None:
                return None
            path = target
        if path.split(".", 1)[0] != self.package:
            missing = missing_external(path)
            if missing is not None:
                griffe.logger.warning(f"{scope.path}: {target!r} names nothing: {missing}")
            return EXTERNAL
        try:
            found = self.collection[path]
            canonical = target_of(found).path
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
        return self.public_path(canonical) or canonical

    def _exported(self, name: str, scope: griffe.Object) -> str | None:
        """The canonical path of a public name, the scope's own public module first."""
        own = self.public_path(scope.canonical_path) or ""
        modules = sorted(self.modules, key=lambda module: not own.startswith(module + "."))
        for module in modules:
            if name in self.exports[module]:
                member = self.collection[module].members[name]
                return target_of(member).path
        return None

    def private_alias(self, expr: griffe.Expr) -> tuple[str, griffe.Expr] | None:
        """The path and value of the type alias a name in an annotation stands for, when it
        is the package's and not exported; None for any other name or expression."""
        if not isinstance(expr, (griffe.ExprName, griffe.ExprAttribute)):
            return None
        path = expr.canonical_path
        if path.split(".", 1)[0] != self.package or self.public_path(path) is not None:
            return None
        try:
            found = target_of(self.collection[path])
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
        if self.public_path(found.path) is not None or not (
            found.is_type_alias
            or (found.is_attribute and found.parent is not None and found.parent.is_module)
        ):
            return None
        value = found.value
        # A TypeVar, NewType, ... is a call: its name is what a signature should show.
        if not isinstance(value, griffe.Expr) or isinstance(value, griffe.ExprCall):
            return None
        return found.path, value

    def documented(self) -> Iterator[griffe.Object]:
        """Every object the reference renders: the public names and their members."""
        seen: set[str] = set()
        for public in self.public:
            yield from _walk(self.collection[public], seen, public_only=True)


def _walk(
    obj: griffe.Object, seen: set[str], *, public_only: bool = False
) -> Iterator[griffe.Object]:
    """``obj`` and its members, recursively; aliases (imports) are not followed."""
    obj = target_of(obj)
    if obj.path in seen:
        return
    seen.add(obj.path)
    yield obj
    for member in list(obj.members.values()):
        if member.is_alias:
            continue
        if public_only and not member.is_public:
            continue
        yield from _walk(member, seen, public_only=public_only)


class SphinxRoles(griffe.Extension):
    """Converts conngrpc's Sphinx docstrings for mkdocstrings once the package is loaded."""

    def on_package(
        self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: object
    ) -> None:
        if pkg.name != "conngrpc":
            return
        names = PublicNames(loader.modules_collection)
        # Before griffe's dataclasses extension (always loaded last) copies the fields'
        # annotations into each __init__, and before any docstring is parsed.
        for obj in list(names.documented()):
            expand_annotations(obj, names)
        private = []
        for obj in list(_walk(pkg, set())):
            if obj.is_attribute and obj.docstring is None:
                _comment_docstring(obj, loader)
            if obj.is_attribute and obj.labels == {"instance-attribute"}:
                obj.value = None  # set in __init__: "health = health" says nothing
            if obj.docstring is None:
                continue
            value = obj.docstring.value
            if _META_PRIVATE.search(value):
                private.append(obj)
            obj.docstring.value = convert_docstring(
                value, lambda target, o=obj: names.resolve(target, o)
            )
        # Out of the documented tree: a class's members are seen through aliases
        # (conngrpc.PooledChannel), whose visibility an object's own `public` does not set.
        # A reference to one from a rendered docstring then fails the build, as it should.
        for obj in private:
            if obj.parent is not None:
                obj.parent.del_member(obj.name)
        for obj in names.documented():
            if obj.is_class:
                _drop_private_bases(obj, names)
            if obj.docstring is not None:
                _link_raises(obj, names)


def expand_private_aliases(
    expr: griffe.Expr, names: PublicNames, seen: frozenset[str] = frozenset()
) -> griffe.Expr:
    """``expr`` with each name of a private type alias replaced by the alias's value,
    recursively; ``expr`` itself when it has none. The tree is rebuilt, never changed in
    place: an alias's value is shared by every annotation that names it."""
    alias = names.private_alias(expr)
    if alias is not None:
        path, value = alias
        if path in seen:  # an alias that names itself: leave the name
            return expr
        return expand_private_aliases(value, names, seen | {path})
    if isinstance(expr, (griffe.ExprName, griffe.ExprAttribute)):
        return expr  # a name to link, or a dotted one whose parts are names
    changes = {}
    for field in dataclasses.fields(expr):
        value = getattr(expr, field.name)
        expanded = _expand_value(value, names, seen)
        if expanded is not value:
            changes[field.name] = expanded
    return dataclasses.replace(expr, **changes) if changes else expr


def _expand_value(value: object, names: PublicNames, seen: frozenset[str]) -> object:
    """A field of an Expr, expanded: an Expr, or a list or tuple of them (and strings)."""
    if isinstance(value, griffe.Expr):
        return expand_private_aliases(value, names, seen)
    if isinstance(value, (list, tuple)):
        items = [_expand_value(item, names, seen) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return type(value)(items)
    return value


def expand_annotations(obj: griffe.Object, names: PublicNames) -> None:
    """``obj``'s annotations (parameters and return, or its own) with private type aliases
    spelt out."""
    if isinstance(obj, griffe.Function):
        for parameter in obj.parameters:
            if isinstance(parameter.annotation, griffe.Expr):
                parameter.annotation = expand_private_aliases(parameter.annotation, names)
        if isinstance(obj.returns, griffe.Expr):
            obj.returns = expand_private_aliases(obj.returns, names)
    elif isinstance(obj, griffe.Attribute) and isinstance(obj.annotation, griffe.Expr):
        obj.annotation = expand_private_aliases(obj.annotation, names)


def _comment_docstring(attr: griffe.Object, loader: griffe.GriffeLoader) -> None:
    """The ``#:`` comment lines right above ``attr``, as its docstring."""
    if attr.lineno is None or attr.filepath is None or isinstance(attr.filepath, list):
        return
    lines = loader.lines_collection[attr.filepath]
    comment: list[str] = []
    number = attr.lineno - 1  # the line above, counted from 1
    while number >= 1 and lines[number - 1].strip().startswith("#:"):
        comment.insert(0, lines[number - 1].strip()[2:].strip())
        number -= 1
    if comment:
        attr.docstring = griffe.Docstring(
            "\n".join(comment),
            lineno=number + 1,
            parent=attr,
            parser=loader.docstring_parser,
            parser_options=loader.docstring_options,
        )


def _drop_private_bases(cls: griffe.Object, names: PublicNames) -> None:
    """``cls`` without the bases that are conngrpc's but not exported ("Bases: Declared")."""
    kept = []
    for base in cls.bases:
        path = base.canonical_path if isinstance(base, griffe.Expr) else str(base)
        if path.split(".", 1)[0] == "conngrpc" and names.public_path(path) is None:
            continue
        kept.append(base)
    cls.bases = kept


def _link_raises(obj: griffe.Object, names: PublicNames) -> None:
    """Each ``:raises X:`` exception as a name cross-referenced to its public path."""
    assert obj.docstring is not None
    for section in obj.docstring.parsed:
        if section.kind is not griffe.DocstringSectionKind.raises:
            continue
        for raised in section.value:
            if not isinstance(raised.annotation, str):
                continue
            identifier = names.resolve(raised.annotation, obj)
            if identifier:
                parent, _, name = identifier.rpartition(".")
                raised.annotation = griffe.ExprName(name, parent=parent)
            elif identifier is None:
                griffe.logger.warning(
                    f"{obj.path}: ':raises {raised.annotation}:' names nothing known"
                )
