"""packaging/udev/90-kjumpd.rules: it speaks of the property kjumpd reads, and its example rules are well formed."""

from __future__ import annotations

import re
from pathlib import Path

from kjumpd.daemon.devices import UNBIND_PROPERTY

RULES = Path(__file__).resolve().parent.parent / "packaging" / "udev" / "90-kjumpd.rules"
# one udev rule token: KEY or KEY{attribute}, an operator, a double-quoted value
TOKEN = re.compile(r'^(?P<key>[A-Z_]+)(\{(?P<attr>[A-Za-z0-9_.*-]+)\})?(?P<op>==|!=|=|\+=|-=|:=)"(?P<value>[^"]*)"$')
MATCH_KEYS = {"ACTION", "SUBSYSTEM", "KERNEL", "DRIVER", "ATTR", "ENV"}


def example_rules() -> list[str]:
    """The commented-out example rules (lines that are a rule once the leading # is removed)."""
    return [line[1:] for line in RULES.read_text().splitlines() if re.match(r"^#[A-Z]+[{=!]", line)]


def test_rules_file_documents_the_property_kjumpd_reads() -> None:
    text = RULES.read_text()
    assert f'ENV{{{UNBIND_PROPERTY}}}="1"' in text
    assert all(line.startswith("#") or not line.strip() for line in text.splitlines()), \
        "the shipped file tags no device by itself"


def test_example_rules_are_well_formed() -> None:
    examples = example_rules()
    assert len(examples) == 4
    for rule in examples:
        tokens = [TOKEN.match(t.strip()) for t in rule.split(",")]
        assert all(tokens), f"malformed token in {rule!r}"
        matches = [t for t in tokens if t["op"] in ("==", "!=")]
        assigns = [t for t in tokens if t["op"] not in ("==", "!=")]
        assert matches and {t["key"] for t in matches} <= MATCH_KEYS, rule
        assert [(t["key"], t["attr"]) for t in assigns] == [("ENV", UNBIND_PROPERTY)], rule
        assert assigns[0]["value"] in ("0", "1"), rule
