"""Options dataclasses built from config dicts, with every problem named at once.

A config typo must fail before any job computes, and name *all* that is wrong, not the first:
``options_from_dict`` reports unknown keys and values of the wrong type together, and a class
deriving from :class:`Checked` lists every out-of-range value of its ``problems()`` in one
:class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from nabla.errors import UserError


class ConfigError(UserError, ValueError):
    """One or more bad config entries, each as ``key = value: why``."""

    def __init__(self, problems: list[str], context: str = ""):
        self.problems = list(problems)
        super().__init__((f"{context}: " if context else "") + "; ".join(self.problems))


def problem(key: str, value: Any, why: str) -> str:
    return f"{key} = {value!r}: {why}"


class Checked:
    """Mixin of an options dataclass: ``problems()`` lists bad values, construction refuses them."""

    def problems(self) -> list[str]:
        return []

    def __post_init__(self):
        if found := self.problems():
            raise ConfigError(found, type(self).__name__)


def field_default(field: dataclasses.Field) -> Any:
    """A dataclass field's default value (its factory's product; None without a default)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _type_problem(name: str, default: Any, value: Any) -> str | None:
    """Whether ``value`` has the type of the field's default (ints pass for floats; a default of
    None or of another type is not checked here)."""
    if value is None or default is None:
        return None
    if isinstance(default, bool):
        ok, wanted = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        # YAML reads 1e-3 (no dot) as a string: the commonest way a number goes wrong in a config
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, wanted = isinstance(value, str), "a string"
    elif isinstance(default, tuple):
        ok, wanted = isinstance(value, (list, tuple)), "a list"
    else:
        return None
    return None if ok else problem(name, value, f"expected {wanted}")


def options_from_dict(cls: type, values: dict | None) -> Any:
    """Build an options dataclass from a dict (YAML lists become tuples), naming every unknown
    key and every value of the wrong type in one :class:`ConfigError`."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    found = [f"unknown key {k!r} (known: {', '.join(sorted(fields))})" for k in sorted(set(values) - set(fields))]
    typed = {k: v for k, v in values.items() if k in fields}
    for key, value in list(typed.items()):
        if found_type := _type_problem(key, field_default(fields[key]), value):
            found.append(found_type)
            del typed[key]
    try:
        built = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in typed.items()})
    except ConfigError as error:  # the out-of-range values among the well-formed ones, named too
        found += error.problems
    if found:
        raise ConfigError(found, cls.__name__)
    return built


def option_docs(cls: type) -> dict[str, str]:
    """Each field's description from the ``Args:`` block of the dataclass's docstring (and its
    bases'), TRL-style: ``name: text`` indented under ``Args:``, continuation lines deeper.

    The docstring is the one place an option is documented; ``config/options.md`` is generated
    from it (``python -m nabla options-doc``).
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = klass.__dict__.get("__doc__")
        if not text or "Args:" not in text:
            continue
        lines = inspect.cleandoc(text).splitlines()
        body = lines[lines.index("Args:") + 1:]
        name = None
        for line in body:
            if line and not line.startswith(" "):
                break  # the block ends where the indentation does
            stripped = line.strip()
            if not stripped:
                continue
            head, sep, rest = stripped.partition(": ")
            if line.startswith("    ") and not line.startswith("     ") and sep and head.isidentifier():
                name = head
                docs[name] = rest.strip()
            elif name is not None:
                docs[name] += " " + stripped
    return docs


def undocumented_options(cls: type) -> tuple[list[str], list[str]]:
    """(fields without an ``Args:`` entry, entries that name no field) of an options dataclass."""
    fields = [f.name for f in dataclasses.fields(cls)]
    docs = option_docs(cls)
    return [f for f in fields if f not in docs], [d for d in docs if d not in fields]
