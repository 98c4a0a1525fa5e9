"""MkDocs hooks: the reference's tables, made from the code each time the site is built.

A page of docs/reference/ asks for a table with a marker, which is replaced here:

- ``<!-- conngrpc-public-names -->``: every public name, one line each, linked to its entry;
- ``<!-- conngrpc-settings: pool -->``: a pool's settings (the keys of ``PoolSettings``,
  their types, the defaults ``ResolvedSettings`` gives them, and their ``#:`` comments); a
  default of None that the setting's type does not take reads "unset";
- ``<!-- conngrpc-settings: channel -->``: ``ChannelConfig``'s fields, the same way;
- ``<!-- conngrpc-errors -->``: the error classes as a tree, from ``ConnGRPCError`` down.

A setting or a public name without a docstring stops the build, naming it. Listed in
mkdocs.yml under ``hooks``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from pathlib import Path
from typing import Any

import griffe
from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).parent))

from public_api import PUBLIC_MODULES
from sphinx_roles import PublicNames, SphinxRoles, target_of

_MARKER = re.compile(r"<!-- conngrpc-([a-z-]+)(?:: ([a-z]+))? -->")


class MissingDocstringError(PluginError):
    """A table needs a docstring that is not there."""


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """The page with each marker replaced by its table."""
    return _MARKER.sub(lambda match: table(match.group(1), match.group(2)), markdown)


def table(kind: str, which: str | None) -> str:
    """The markdown a marker stands for."""
    if kind == "public-names":
        return public_names_table()
    if kind == "settings" and which == "pool":
        return pool_settings_table()
    if kind == "settings" and which == "channel":
        return channel_settings_table()
    if kind == "errors":
        return errors_tree()
    raise ValueError(f"docs: unknown table marker conngrpc-{kind}{f': {which}' if which else ''}")


@functools.cache
def _loaded() -> tuple[griffe.Module, PublicNames]:
    """conngrpc as the reference renders it (this hook runs beside mkdocstrings' copy)."""
    loader = griffe.GriffeLoader(
        extensions=griffe.load_extensions(SphinxRoles),
        search_paths=[str(Path(__file__).parents[2])],
        docstring_parser=griffe.Parser.sphinx,
    )
    package = loader.load("conngrpc", try_relative_path=False)
    loader.resolve_aliases(implicit=False, external=False)
    assert isinstance(package, griffe.Module)
    return package, PublicNames(loader.modules_collection)


def _cell(text: str) -> str:
    """Markdown text on one line, safe in a table cell: a ``|`` outside code escaped."""
    pieces = " ".join(text.split()).split("`")
    return "`".join(piece if i % 2 else piece.replace("|", "\\|") for i, piece in enumerate(pieces))


def _docstring(obj: griffe.Object | griffe.Alias, what: str) -> str:
    """``obj``'s docstring (converted), or the build stops naming ``what``."""
    target = target_of(obj)
    if target.docstring is None or not target.docstring.value.strip():
        raise MissingDocstringError(
            f"docs: {what} has no docstring (a #: comment above an attribute or a "
            "setting will do); the reference lists it"
        )
    return target.docstring.value


def _summary(obj: griffe.Object | griffe.Alias, what: str) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    paragraph = _cell(_docstring(obj, what).strip().split("\n\n", 1)[0])
    return paragraph.split(". ", 1)[0].removesuffix(".") + "."


def _settings_table(owner: str, keys: list[str], defaults: dict[str, str], anchor: str) -> str:
    """name | type | default | meaning, one row per key of the class at ``owner``."""
    package, _ = _loaded()
    cls = package[owner.removeprefix("conngrpc.")]
    rows = ["| Setting | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
    for key in keys:
        attribute = cls.members[key]
        meaning = _cell(_docstring(attribute, f"{owner}.{key}"))
        # private type aliases are spelt out already (sphinx_roles.expand_private_aliases)
        kind = f"`{attribute.annotation}`"
        default = defaults.get(key, "required")
        if default == _NONE and not _takes_none(attribute.annotation):
            # None stands for "not given" and may not be passed (child_spec refuses it):
            # the setting's comment says what leaving it unset does
            default = "unset"
        rows.append(f"| [](){{#{anchor}.{key}}}`{key}` | {kind} | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


#: A default of None, as the table shows it when None is a value the type takes.
_NONE = "`None`"


def _takes_none(annotation: object) -> bool:
    """Whether an annotation (an Expr) lets None be given: ``X | None`` (ruff's UP rules
    keep conngrpc from writing ``Optional[X]``)."""
    if isinstance(annotation, griffe.ExprBinOp) and annotation.operator == "|":
        return _takes_none(annotation.left) or _takes_none(annotation.right)
    return str(annotation) == "None"


def _defaults(cls: type) -> dict[str, str]:
    """Each dataclass field's default, as code; a required field has none."""
    defaults = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = f"`{field.default!r}`"
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = f"`{field.default_factory.__name__}()`"
    return defaults


def pool_settings_table() -> str:
    """The settings a pool takes, in ``PoolSettings``' order."""
    from conngrpc.pool.settings import SETTINGS, ResolvedSettings

    defaults = _defaults(ResolvedSettings)
    defaults.setdefault("name", "the class name")
    return _settings_table(
        "conngrpc.pool.settings.PoolSettings", list(SETTINGS), defaults, "conngrpc.PoolSettings"
    )


def channel_settings_table() -> str:
    """``ChannelConfig``'s fields, in their order."""
    from conngrpc import ChannelConfig

    keys = [field.name for field in dataclasses.fields(ChannelConfig)]
    return _settings_table(
        "conngrpc.channel.config.ChannelConfig",
        keys,
        _defaults(ChannelConfig),
        "conngrpc.ChannelConfig",
    )


def errors_tree() -> str:
    """conngrpc's error classes as a nested list, each with its other (builtin) bases."""
    import conngrpc
    from conngrpc import errors

    order = list(vars(errors))
    exported = set(conngrpc.__all__)

    def lines(cls: type, depth: int) -> list[str]:
        others = [base.__name__ for base in cls.__bases__ if base.__module__ == "builtins"]
        also = f" (also {', '.join(f'`{name}`' for name in others)})" if depth and others else ""
        name = cls.__name__
        shown = f"[`{name}`][conngrpc.{name}]" if name in exported else f"`{name}`"
        out = [f"{'    ' * depth}- {shown}{also}"]
        # conngrpc's private subclasses elsewhere (a health refusal, ...) are not listed
        subs = [sub for sub in cls.__subclasses__() if sub.__module__ == errors.__name__]
        for sub in sorted(subs, key=lambda sub: order.index(sub.__name__)):
            out += lines(sub, depth + 1)
        return out

    return "\n".join(lines(errors.ConnGRPCError, 0)) + "\n"


def public_names_table() -> str:
    """Every name of ``PUBLIC_MODULES``' ``__all__``, linked, with its docstring's summary."""
    package, names = _loaded()
    out = []
    for module_path in PUBLIC_MODULES:
        module = package if module_path == "conngrpc" else package[module_path[9:]]
        out += [f"### `{module_path}`", "", "| Name | What it is |", "| --- | --- |"]
        for name in names.exports[module_path]:
            if name == "__version__":
                continue  # stated in the page's text
            member = module.members[name]
            path = f"{module_path}.{name}"
            if member.is_alias and member.final_target.is_module:
                page = member.final_target.name
                summary = _summary(member, path)
                out.append(f"| [`{path}`]({page}.md) | {summary} |")
                continue
            out.append(f"| [`{name}`][{path}] | {_summary(member, path)} |")
        out.append("")
    return "\n".join(out)
