"""A reader for Logstash pipeline files, enough to check the fleet's pipeline without Logstash.

Hand-written because no maintained Python package parses the Logstash config language. It
follows the grammar of Logstash's `treetop` definition (logstash-core/lib/logstash/config/
grammar.treetop) for what pipelines use: sections, plugins, attributes with string, number,
bareword, array and hash values, and if / else if / else blocks whose conditions may hold
strings, regular expressions and field references. Anything else is a syntax error, which is
the point: a typo fails the test here instead of the Logstash container at start-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SECTIONS = ("input", "filter", "output")
# Bare words a condition may hold outside a field selector `[name]`.
_CONDITION_WORDS = {"and", "or", "xor", "nand", "in", "not"}


class LogstashSyntaxError(ValueError):
    pass


@dataclass
class Plugin:
    section: str
    name: str
    attributes: dict[str, Any]
    conditions: list[str]  # the conditions of the enclosing if-blocks, outermost first


@dataclass
class Pipeline:
    plugins: list[Plugin] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)

    def by_name(self, section: str, name: str) -> list[Plugin]:
        return [p for p in self.plugins if p.section == section and p.name == name]


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
  | (?P<arrow>=>)
  | (?P<op>==|!=|<=|>=|=~|!~|<|>|!)
  | (?P<number>-?\d+(?:\.\d+)?(?![\w.]))
  | (?P<word>[A-Za-z_@][\w@.-]*)
  | (?P<punct>[{}\[\],()])
  | (?P<regex>/(?:\\.|[^/\\\n])*/)
    """,
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            line = text.count("\n", 0, pos) + 1
            raise LogstashSyntaxError(f"unexpected {text[pos : pos + 20]!r} on line {line}")
        kind = match.lastgroup
        assert kind
        if kind != "ws":
            out.append((kind, match.group()))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.pipeline = Pipeline()

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        token = self.peek()
        if token is None:
            raise LogstashSyntaxError(f"unexpected end of file, expected {value or kind}")
        if (value is not None and token[1] != value) or (kind is not None and token[0] != kind):
            raise LogstashSyntaxError(f"expected {value or kind}, got {token[1]!r} (token {self.i})")
        self.i += 1
        return token[1]

    def parse(self) -> Pipeline:
        while self.peek() is not None:
            section = self.take(kind="word")
            if section not in SECTIONS:
                raise LogstashSyntaxError(f"unknown section {section!r}")
            self.take("{")
            self.body(section, [])
            self.take("}")
        return self.pipeline

    def body(self, section: str, conditions: list[str]) -> None:
        while (token := self.peek()) is not None and token[1] != "}":
            if token == ("word", "if"):
                self.conditional(section, conditions)
            else:
                name = self.take(kind="word")
                self.take("{")
                attributes: dict[str, Any] = {}
                while (inner := self.peek()) is not None and inner[1] != "}":
                    key = self.take(kind="word")
                    self.take("=>")
                    if key in attributes:
                        raise LogstashSyntaxError(f"{name}: attribute {key!r} given twice")
                    attributes[key] = self.value()
                self.take("}")
                self.pipeline.plugins.append(Plugin(section, name, attributes, list(conditions)))

    def conditional(self, section: str, conditions: list[str]) -> None:
        self.take("if")
        condition = self.condition()
        self.block(section, [*conditions, condition])
        while self.peek() == ("word", "else"):
            self.take("else")
            if self.peek() == ("word", "if"):
                self.take("if")
                condition = self.condition()
                self.block(section, [*conditions, condition])
            else:
                self.block(section, [*conditions, "else"])
                return

    def block(self, section: str, conditions: list[str]) -> None:
        self.take("{")
        self.body(section, conditions)
        self.take("}")

    def condition(self) -> str:
        parts: list[str] = []
        depth = 0
        while (token := self.peek()) is not None and not (token[1] == "{" and depth == 0):
            after_bracket = bool(parts) and parts[-1] == "["
            if token[0] == "word" and token[1] not in _CONDITION_WORDS and not after_bracket:
                raise LogstashSyntaxError(f"unexpected {token[1]!r} in condition {' '.join(parts)!r}")
            if token[1] in ("[", "("):
                depth += 1
            elif token[1] in ("]", ")"):
                depth -= 1
            parts.append(token[1])
            self.i += 1
        if not parts or depth != 0:
            raise LogstashSyntaxError(f"malformed condition {' '.join(parts)!r}")
        condition = " ".join(parts)
        self.pipeline.conditions.append(condition)
        return condition

    def value(self) -> Any:
        kind, text = self.peek() or ("", "")
        if kind == "string":
            self.i += 1
            return text[1:-1]
        if kind == "number":
            self.i += 1
            return float(text) if "." in text else int(text)
        if kind == "word":
            self.i += 1
            return {"true": True, "false": False}.get(text, text)
        if text == "[":
            self.take("[")
            items: list[Any] = []
            while self.peek() is not None and self.peek() != ("punct", "]"):
                items.append(self.value())
                if self.peek() == ("punct", ","):
                    self.take(",")
            self.take("]")
            return items
        if text == "{":
            self.take("{")
            entries: dict[str, Any] = {}
            while self.peek() is not None and self.peek() != ("punct", "}"):
                key = self.value()
                self.take("=>")
                entries[str(key)] = self.value()
                if self.peek() == ("punct", ","):
                    self.take(",")
            self.take("}")
            return entries
        raise LogstashSyntaxError(f"expected a value, got {text!r}")


def parse_pipeline(text: str) -> Pipeline:
    return _Parser(text).parse()


_FIELD_REF = re.compile(r"\[\s*([A-Za-z_@][\w@]*)\s*\]")
_SPRINTF = re.compile(r"%\{([A-Za-z_@][\w@]*)\}")


def referenced_fields(pipeline: Pipeline) -> set[str]:
    """Top-level event fields the pipeline reads: in conditions, sprintf and the field options."""
    fields: set[str] = set()
    for condition in pipeline.conditions:
        fields.update(_FIELD_REF.findall(condition))

    def walk(value: Any) -> None:
        if isinstance(value, str):
            fields.update(_SPRINTF.findall(value))
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    for plugin in pipeline.plugins:
        walk(plugin.attributes)
        if plugin.name == "json" and "source" in plugin.attributes:
            fields.add(plugin.attributes["source"])
        if plugin.name == "date" and plugin.attributes.get("match"):
            fields.add(plugin.attributes["match"][0])
    return fields
