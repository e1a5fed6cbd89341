"""Valid ranges: what a value may be, how a raw value (CLI text, YAML scalar, Python object) becomes one, and
the one-line message when it cannot.

Every value that enters bnsweep (a `bnsweep trial` option, a sweep file key, `--set`, an argument of
`bnsweep.run_sweep`) is checked by one of these rules, so a value is valid in the same range wherever it is
written. The tables of rules are in bnsweep/config.py.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnsweep.errors import BnsweepError

SHOWN = 60  # characters of a bad value shown in a message: a 10 MB value is still a one-line error


class Invalid(ValueError):
    """What is wrong with a value (without its name); `check` adds the name, the value and the valid range."""


def printable(text: str) -> str:
    """Text as a terminal may show it: every character Python deems unprintable (escape sequences' ESC, other
    C0/C1 controls, bidi overrides, line and paragraph separators) written as its escape (\\x1b, \\u202e), so a
    sweep's description, a recorded error or a file name cannot move the cursor, recolour or reorder the line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def show(value: Any) -> str:
    """A value as a message shows it: on one line, at most SHOWN characters, strings quoted, lists as written."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > 200:
        return f"<a {len(str(abs(value))) if abs(value).bit_length() < 10_000 else 'huge'}-digit number>"
    if isinstance(value, tuple):
        text = ",".join(show(v) for v in value[:20])
    else:
        try:
            text = repr(value) if isinstance(value, str) else str(value)
        except (ValueError, RecursionError):
            text = f"<a {type(value).__name__}>"
    text = printable(" ".join(text.split("\n")))
    return text if len(text) <= SHOWN else text[:SHOWN - 1] + "…"


def is_null(raw: Any) -> bool:
    """None, or the CLI's and YAML's spellings of it ("none" is a norm variant, not a null)."""
    return raw is None or (isinstance(raw, str) and raw.strip().lower() in ("null", "~", ""))


class Rule:
    """A valid range: `parse` turns a raw value into a valid one or raises Invalid; `describe` says the range."""

    def parse(self, raw: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Number(Rule):
    """A finite number in [low, high] (low excluded with low_open); whole numbers for kind=int. Numbers written
    as text ("1e-3", which PyYAML reads as a string) count; true/false, lists and mappings do not."""

    kind: type
    low: float
    high: float
    low_open: bool = False

    def parse(self, raw: Any) -> Any:
        value = _number(raw)
        if self.kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise Invalid("not a whole number")
                value = int(value)
        if value < self.low or (self.low_open and value == self.low) or value > self.high:
            raise Invalid("out of range")
        return int(value) if self.kind is int else float(value)

    def describe(self) -> str:
        what = "a whole number" if self.kind is int else "a number"
        if self.low_open:
            return f"use {what} > {_fmt(self.low)} and <= {_fmt(self.high)}"
        return f"use {what} from {_fmt(self.low)} to {_fmt(self.high)}"


def _number(raw: Any) -> int | float:
    """An exact int or a finite float from a raw value; ints stay exact (2**63 - 1 is not rounded). Text is
    ASCII only: a number that does not look like one to a reader (١٠, １０, ௧) is refused, not read."""
    if isinstance(raw, bool):
        raise Invalid("true/false is not a number")
    if isinstance(raw, numbers.Integral):
        return int(raw)
    if isinstance(raw, numbers.Real):
        value = float(raw)
    elif isinstance(raw, str):
        text = raw.strip().replace("_", "")
        if not text.isascii():  # int() and float() read Arabic-Indic (١٠) or full-width (１０) digits as numbers
            raise Invalid("not a number written with the digits 0-9")
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            raise Invalid("not a number") from None
    else:
        raise Invalid(f"a {_kind(raw)}, not a number")
    if not math.isfinite(value):
        raise Invalid("not a finite number")
    return value


def _kind(raw: Any) -> str:
    return {dict: "mapping", list: "list", tuple: "list"}.get(type(raw), type(raw).__name__)


@dataclass(frozen=True)
class Choice(Rule):
    """One of a fixed set of words."""

    options: tuple[str, ...]

    def parse(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise Invalid(f"a {_kind(raw)}, not a word")
        if raw.strip() not in self.options:
            raise Invalid("unknown value")
        return raw.strip()

    def describe(self) -> str:
        return "choose one of " + ", ".join(self.options)


@dataclass(frozen=True)
class Flag(Rule):
    """true or false (also yes/no, on/off, 1/0)."""

    def parse(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower() if isinstance(raw, str | int) else None
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise Invalid("not true or false")

    def describe(self) -> str:
        return "use true or false"


DEVICE = re.compile(r"(cpu|auto|cuda(:[0-9]{1,3})?)")


@dataclass(frozen=True)
class Device(Rule):
    """A torch device bnsweep can train on: cpu, cuda, cuda:N (N < 1000) or auto."""

    def parse(self, raw: Any) -> str:
        if not isinstance(raw, str) or not DEVICE.fullmatch(raw.strip()):
            raise Invalid("not a device bnsweep trains on")
        return raw.strip()

    def describe(self) -> str:
        return "use cpu, cuda, cuda:N or auto"


@dataclass(frozen=True)
class Directory(Rule):
    """A directory that exists (a data root: a typo must not fall back silently to another copy of the data)."""

    def parse(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise Invalid(f"a {_kind(raw)}, not a path")
        if "\0" in raw or not Path(raw).expanduser().is_dir():
            raise Invalid("no such directory")
        return raw

    def describe(self) -> str:
        return "give an existing directory (create it first to download data sets into it)"


@dataclass(frozen=True)
class Items(Rule):
    """A non-empty list of `item` values, written as a list or as comma-separated text; "all" when allowed."""

    item: Rule
    most: int = 64
    all_allowed: bool = False

    def parse(self, raw: Any) -> tuple | str:
        if self.all_allowed and isinstance(raw, str) and raw.strip() == "all":
            return "all"
        if isinstance(raw, list | tuple):
            items = list(raw)
        elif isinstance(raw, str):
            items = raw.split(",")
        elif isinstance(raw, numbers.Real) and not isinstance(raw, bool):
            items = [raw]
        else:
            raise Invalid(f"a {_kind(raw)}, not a list")
        items = [i for i in items if not (isinstance(i, str) and i.strip() == "")]
        if not items:
            raise Invalid("an empty list")
        if len(items) > self.most:
            raise Invalid(f"{len(items)} values, more than {self.most}")
        out = []
        for n, item in enumerate(items, 1):
            try:
                out.append(self.item.parse(item))
            except Invalid as e:
                raise Invalid(f"value {n} ({show(item)}) is {e}") from None
        return tuple(out)

    def describe(self) -> str:
        head = "'all' or " if self.all_allowed else ""
        return f"{head}a list of 1 to {self.most} values, each: {self.item.describe().removeprefix('use ')}"


@dataclass(frozen=True)
class Text(Rule):
    """A line of text of bounded length (a sweep's description)."""

    most: int = 500

    def parse(self, raw: Any) -> str:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise Invalid(f"a {_kind(raw)}, not text")
        if len(str(raw)) > self.most:
            raise Invalid(f"{len(str(raw))} characters")
        return str(raw)

    def describe(self) -> str:
        return f"use text of at most {self.most} characters"


@dataclass(frozen=True)
class Nullable(Rule):
    """None (null) or a value of `rule`."""

    rule: Rule

    def parse(self, raw: Any) -> Any:
        return None if is_null(raw) else self.rule.parse(raw)

    def describe(self) -> str:
        return self.rule.describe() + " (or null for the default)"


def check(rule: Rule, raw: Any, label: str) -> Any:
    """The valid value of `raw`, or BnsweepError: `<label>=<value>: <what is wrong>; <valid range>`."""
    if is_null(raw) and not isinstance(rule, Nullable):
        raise BnsweepError(f"{label}: needs a value; {rule.describe()}")
    try:
        return rule.parse(raw)
    except Invalid as e:
        raise BnsweepError(f"{label}={show(raw)}: {e}; {rule.describe()}") from None
