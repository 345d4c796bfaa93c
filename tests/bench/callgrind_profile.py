"""Reading callgrind's profiles: each function's own instructions, by object and function."""

from __future__ import annotations

import collections
import re

_NAMED = re.compile(r"(ob|fn|cob|cfn|fl|fi|fe|cfi|cfl)=(?:\((\d+)\))?\s*(.*)")


def parse_profile(text: str) -> tuple[str, collections.Counter]:
    """A callgrind profile's trigger and its self cost (first event) per (object, function)."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    obj = fn = ""
    after_call = False
    trigger = ""
    costs: collections.Counter = collections.Counter()
    for line in text.splitlines():
        if line.startswith("desc: Trigger:"):
            trigger = line.split("--dump-before=", 1)[-1].strip()
            continue
        named = _NAMED.match(line)
        if named:
            kind, index, name = named.groups()
            table = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn"}.get(kind)
            if table and index:
                if name:
                    names[table][index] = name.strip()
                name = names[table].get(index, "?")
            if kind == "ob":
                obj = name
            elif kind == "fn":
                fn = name
            continue
        if line.startswith("calls="):
            after_call = True  # the next cost line is the call's inclusive cost
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            fields = line.split()
            if after_call:
                after_call = False
            elif len(fields) >= 2:
                costs[(obj, fn)] += int(fields[1])
    return trigger, costs


def file_under(categories: list[tuple[str, str, str]], obj: str, fn: str, otherwise: str) -> str:
    """The name of the first (field, pattern, name) row whose pattern matches the object ("ob")
    or the function ("fn"), else `otherwise`."""
    for field, pattern, name in categories:
        if re.search(pattern, obj if field == "ob" else fn):
            return name
    return otherwise
