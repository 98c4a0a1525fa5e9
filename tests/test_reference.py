"""The API reference (docs/reference/*.md) covers every public name, read from the pages'
text: no site build needed. And the docstring conversion the site uses
(tools/docs/sphinx_roles.py) turns Sphinx roles into the cross-references it should."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"


def tool(name: str) -> Any:
    """A module of tools/docs/, loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "docs" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: the modules the reference documents
PUBLIC_MODULES: tuple[str, ...] = tool("public_api").PUBLIC_MODULES

#: A ``::: path`` line and the indented YAML of its options under it.
_DIRECTIVE = re.compile(r"^::: *(\S+) *\n((?:(?:[ \t]+\S.*)?\n)*)", re.MULTILINE)

#: An entry's ``members`` option: None when it has none (every public member shown),
#: False for none, else the names it lists.
Members = list[str] | bool | None


def members_option(options: str) -> Members:
    """The ``members`` option of a directive's indented YAML block."""
    parsed = yaml.safe_load(textwrap.dedent(options)) or {}
    return (parsed.get("options") or {}).get("members")


def directives() -> dict[str, Members]:
    """Each ``::: path`` of the reference pages, with its ``members`` option."""
    found: dict[str, Members] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text()):
            found[match.group(1)] = members_option(match.group(2))
    return found


def documented(module: str, name: str, found: dict[str, Members]) -> bool:
    """Whether ``module.name`` has its own directive, or its module is documented whole."""
    return f"{module}.{name}" in found or (module in found and found[module] in (None, True))


def public_names() -> list[tuple[str, str]]:
    return [
        (module, name)
        for module in PUBLIC_MODULES
        for name in importlib.import_module(module).__all__
        if name != "__version__"
    ]


@pytest.mark.parametrize(("module", "name"), public_names())
def test_every_public_name_has_a_reference_entry(module: str, name: str) -> None:
    assert documented(module, name, directives()), (
        f"{module}.{name} is public ({module}.__all__) but no page of docs/reference/ has "
        f"'::: {module}.{name}' (nor documents {module} whole): add it to the page it "
        "belongs to"
    )


def test_the_version_is_named_on_the_reference_index() -> None:
    assert "__version__" in (REFERENCE / "index.md").read_text()


def test_the_check_sees_a_missing_entry() -> None:
    found = directives()
    assert documented("conngrpc", "Pool", found)
    assert documented("conngrpc.telemetry", "attach", found)  # its module, whole
    assert not documented("conngrpc", "NoSuchName", found)
    # conngrpc.sync's page lists its names one by one: the module alone covers none
    assert not documented("conngrpc.sync", "NoSuchName", found)


def _public_methods(obj: object) -> set[str]:
    kinds = (classmethod, staticmethod, property)
    return {
        name
        for name, value in vars(obj).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, kinds))
    }


def test_the_members_option_is_read_however_yaml_writes_it() -> None:
    assert members_option("    options:\n      members: [a, b]\n") == ["a", "b"]
    assert members_option("    options:\n      members:\n        - a\n\n        - b\n") == [
        "a",
        "b",
    ]
    assert members_option("    options:\n      members: false\n") is False
    assert members_option("    options:\n      show_source: false\n") is None


@pytest.mark.parametrize(
    "path", sorted(path for path, members in directives().items() if isinstance(members, list))
)
def test_an_entry_that_lists_its_members_lists_every_method(path: str) -> None:
    """An entry with ``members: [...]`` (its fields are a table) still shows each method."""
    module, _, name = path.rpartition(".")
    listed = set(directives()[path] or ())
    missing = _public_methods(getattr(importlib.import_module(module), name)) - listed
    assert not missing, f"{path}: add {sorted(missing)} to its members: list"


# --- the docstrings' Sphinx roles, as the site shows them ----------------------------------


@pytest.fixture
def roles() -> Any:
    """tools/docs/sphinx_roles.py, which needs griffe (the docs extra, which every test
    environment installs)."""
    return tool("sphinx_roles")


def known(roles: Any) -> Callable[[str], str | None]:
    """A resolver that knows a few names, conngrpc's and others'; None for the rest."""
    return {
        "Pool": "conngrpc.Pool",
        "Pool.channel": "conngrpc.Pool.channel",
        "conngrpc.pool.pool.Pool": "conngrpc.Pool",
        "ValueError": roles.EXTERNAL,
        "grpc.aio.Channel": roles.EXTERNAL,
    }.get


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a :class:`Pool` here", "a [`Pool`][conngrpc.Pool] here"),
        (":meth:`Pool.channel`", "[`Pool.channel()`][conngrpc.Pool.channel]"),
        (":meth:`~Pool.channel`", "[`channel()`][conngrpc.Pool.channel]"),
        (":class:`~conngrpc.pool.pool.Pool`", "[`Pool`][conngrpc.Pool]"),
        (":py:class:`Pool`", "[`Pool`][conngrpc.Pool]"),
        (":exc:`ValueError`", "`ValueError`"),
        (":class:`grpc.aio.Channel`", "`grpc.aio.Channel`"),
        (":class:`!Pool`", "`Pool`"),
        (":class:`the pool <Pool>`", "[`the pool`][conngrpc.Pool]"),
        (":meth:`its channel\n<Pool.channel>`", "[`its channel`][conngrpc.Pool.channel]"),
        (":class:`a pool <!Pool>`", "`a pool`"),
        (":meth:`Pool.channel()`", "[`Pool.channel()`][conngrpc.Pool.channel]"),
        (":meth:`~Pool.channel()`", "[`channel()`][conngrpc.Pool.channel]"),
        (
            "``:class:`` alone; :raises ValueError: stays",
            "``:class:`` alone; :raises ValueError: stays",
        ),
    ],
)
def test_roles_become_cross_references(roles: Any, text: str, expected: str) -> None:
    assert roles.convert_roles(text, known(roles)) == expected


def test_an_unknown_name_is_left_for_the_build_to_fail_on(roles: Any) -> None:
    # autorefs reports [`Nope`][Nope] as unresolved, which fails mkdocs build --strict
    assert roles.convert_roles(":class:`Nope` and :func:`nope.thing`", known(roles)) == (
        "[`Nope`][Nope] and [`nope.thing()`][nope.thing]"
    )


def test_literal_blocks_become_code_blocks_and_their_roles_stay(roles: Any) -> None:
    text = "Example::\n\n    x = 1  # :class:`Pool`\n    y = 2\n\nAfter :class:`Pool`.\n"
    assert roles.convert_docstring(text, known(roles)) == (
        "Example:\n\n```python\nx = 1  # :class:`Pool`\ny = 2\n```\n\n"
        "After [`Pool`][conngrpc.Pool].\n"
    )


def test_a_block_that_is_not_python_is_text(roles: Any) -> None:
    text = "Run it::\n\n    $ python -m conngrpc demo\n"
    assert roles.convert_docstring(text, known(roles)) == (
        "Run it:\n\n```text\n$ python -m conngrpc demo\n```\n"
    )


def test_meta_private_is_dropped_from_the_text(roles: Any) -> None:
    assert roles.convert_docstring("Internal.\n\n:meta private:\n", known(roles)) == (
        "Internal.\n\n"
    )


# --- private type aliases, spelt out in the annotations the reference renders --------------

#: A package with a public function and class whose annotations name private aliases: one
#: naming another, one naming itself, a TypeVar (shown as its name) and a public alias.
ALIASED = {
    "pkg/__init__.py": (
        "from pkg._impl import Mode, Thing, run\n__all__ = ['Mode', 'Thing', 'run']\n"
    ),
    "pkg/_impl.py": textwrap.dedent(
        """\
        from collections.abc import Callable
        from typing import Literal, TypeVar

        T = TypeVar("T")
        Mode = Literal["a", "b"]
        Kind = Literal["x", "y"]


        class Thing:
            kind: Kind


        Pair = tuple[Kind, Thing]
        Hook = Callable[[Pair], None] | None
        Loop = list["Loop"]


        def run(kind: Kind = "x", hook: Hook = None, item: T | None = None, mode: Mode = "a",
                loop: Loop = ()) -> list[Pair]:
            return []
        """
    ),
}


@pytest.fixture
def aliased(tmp_path: Path, roles: Any) -> Any:
    """The package ``ALIASED``, loaded by griffe, its annotations expanded."""
    for name, text in ALIASED.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    import griffe

    loader = griffe.GriffeLoader(search_paths=[str(tmp_path)])
    package = loader.load("pkg")
    loader.resolve_aliases(implicit=False, external=False)
    names = roles.PublicNames(loader.modules_collection, ("pkg",))
    for obj in list(names.documented()):
        roles.expand_annotations(obj, names)
    return package


def test_a_private_alias_is_spelt_out_recursively(aliased: Any) -> None:
    run = aliased["run"]
    shown = {parameter.name: str(parameter.annotation) for parameter in run.parameters}
    assert shown == {
        "kind": "Literal['x', 'y']",
        "hook": "Callable[[tuple[Literal['x', 'y'], Thing]], None] | None",
        "item": "T | None",  # a TypeVar is not an alias to spell out
        "mode": "Mode",  # exported: it links to its own entry
        "loop": "list['Loop']",  # names itself: spelt out once
    }
    assert str(run.returns) == "list[tuple[Literal['x', 'y'], Thing]]"
    assert str(aliased["Thing"].members["kind"].annotation) == "Literal['x', 'y']"


def test_the_names_left_in_an_expanded_annotation_still_resolve(aliased: Any) -> None:
    import griffe

    hook = aliased["run"].parameters["hook"].annotation
    found = {
        part.name: part.canonical_path
        for part in hook.iterate(flat=True)
        if isinstance(part, griffe.ExprName)
    }
    # resolved in the alias's own module, where the reader's page links them
    assert found == {
        "Callable": "collections.abc.Callable",
        "tuple": "tuple",
        "Literal": "typing.Literal",
        "Thing": "pkg._impl.Thing",
    }


def test_an_alias_value_is_not_changed_in_place(aliased: Any) -> None:
    # Pair is spelt out inside Hook and in run's return: its own value stays as written
    assert str(aliased["_impl"].members["Pair"].value) == "tuple[Kind, Thing]"
    assert str(aliased["_impl"].members["Hook"].value) == "Callable[[Pair], None] | None"


def test_no_private_alias_is_left_in_conngrpc_s_reference(roles: Any) -> None:
    """Every annotation the reference renders names only what a reader can look up."""
    hooks = tool("hooks")
    _, names = hooks._loaded()
    left = []
    for obj in names.documented():
        if obj.is_function:
            annotations = [p.annotation for p in obj.parameters] + [obj.returns]
        else:
            annotations = [getattr(obj, "annotation", None)]
        for annotation in annotations:
            for part in getattr(annotation, "iterate", lambda **_: ())(flat=True):
                if not isinstance(part, str) and names.private_alias(part) is not None:
                    left.append(f"{obj.path}: {part.canonical_path}")
    assert not left
    supervisor = names.collection["conngrpc.supervisor.supervisor.Supervisor.__init__"]
    assert str(supervisor.parameters["strategy"].annotation) == (
        "Literal['one_for_one', 'one_for_all', 'rest_for_one']"
    )


# --- the settings tables ---------------------------------------------------------------


def settings_rows(which: str) -> dict[str, tuple[str, str, str]]:
    """The table of ``<!-- conngrpc-settings: which -->``: setting -> type, default, meaning."""
    table = tool("hooks").table("settings", which)
    rows = {}
    for line in table.splitlines()[2:]:
        # | [](){#anchor}`key` | `type` | default | meaning |, a | in code escaped or not
        key = re.match(r"\| \[\]\(\)\{#[^}]+\}`(\w+)` \| ", line)
        assert key is not None, line
        kind, default, meaning = re.fullmatch(
            r"`(.*)` \| (.*?) \| (.*) \|", line[key.end() :]
        ).groups()
        rows[key.group(1)] = (kind, default, meaning)
    return rows


def test_a_setting_unset_by_default_says_so_as_its_text_does() -> None:
    rows = settings_rows("pool")
    for key in ("resolver", "max_calls_per_channel", "service_config"):
        kind, default, meaning = rows[key]
        assert default == "unset", (key, default)
        assert "None" not in kind  # child_spec refuses None for it
        assert "unset" in meaning.lower(), (key, meaning)  # the comment says what unset does
    assert rows["resolve_interval"][1] == "`30.0`"


@pytest.mark.parametrize("which", ["pool", "channel"])
def test_a_default_of_none_is_shown_only_where_none_may_be_given(which: str) -> None:
    rows = settings_rows(which)
    for key, (kind, default, _) in rows.items():
        if default == "`None`":
            assert kind.endswith("| None"), (key, kind)
        if default == "unset":
            assert "None" not in kind, (key, kind)
    if which == "channel":  # ChannelConfig(credentials=None) is valid, and its text says so
        assert rows["credentials"][1] == "`None`"
        assert rows["health_check"][1] == "`None`"


# --- names outside conngrpc, checked by importing them --------------------------------------


@pytest.mark.parametrize(
    ("path", "missing"),
    [
        ("grpc.aio.Channel", None),
        ("grpc.aio.Chanel", "grpc.aio has no attribute 'Chanel'"),
        ("grpc.StatusCode.UNAVAILABLE", None),
        ("asyncio.Queue.get", None),
        ("asyncio.Queue.gte", "asyncio.Queue has no attribute 'gte'"),
        ("anyio.abc.TaskGroup", None),
        ("structlog.stdlib.BoundLogger", None),
        ("typing.Anyy", "typing has no attribute 'Anyy'"),
        ("ValueError", None),
        ("str.jion", "str has no attribute 'jion'"),
        ("dataclasses.Field.name", None),  # an instance's slot, not a class attribute
    ],
)
def test_a_name_outside_conngrpc_is_looked_up_where_it_lives(
    roles: Any, path: str, missing: str | None
) -> None:
    assert roles.missing_external(path) == missing


def test_a_name_from_a_module_not_installed_here_is_taken_as_written(
    roles: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    importlib.import_module("opentelemetry.metrics")  # the test extra brings it: no skip
    assert roles.missing_external("opentelemetry.metrics.MeterProvder") == (
        "opentelemetry.metrics has no attribute 'MeterProvder'"
    )
    # as without the otel extra: the module cannot be imported, so cannot be checked
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "opentelemetry.metrics", raising=False)
    assert roles.missing_external("opentelemetry.metrics.MeterProvder") is None
    # a module that is there but needs one that is not
    (tmp_path / "needs_absent.py").write_text("import conngrpc_no_such_module\nThing = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert roles.missing_external("needs_absent.Thingg") is None
