"""docs/config.md, written from the run config's own declaration: ``python -m boxsup.config_reference``.

One source: a key's description is the ``#`` comment written where its default is declared, in
``boxsup.config.DEFAULTS``: the comment at the end of the key's line, after the comment lines right
above it (a description too long for one line sits there). Where DEFAULTS takes a default from a
dataclass that owns it (``_RULE.lam`` from ``LabelUpdateRule``, ``CRFParams().settings()``) and says
nothing itself, the description is that field's comment in the dataclass. Comments are read from
the source with ``tokenize`` and tied to keys with ``ast``, so the declaration is not changed to
carry them and there is no second table to keep in step. What a key accepts comes from the
validation tables beside DEFAULTS: ``CHOICES``, ``BOUNDS``, ``NULLABLE_TYPES``, and the docstring of
the key's ``VALUE_CHECKS`` function; the type from the default.

``--check`` exits 1 when the page differs from what the declaration gives (``tests/test_docs.py``
asserts the same); without it the page is rewritten.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any

import yaml

from boxsup import config
from boxsup.utils.files import write_text_atomic
from boxsup.utils.numbers import Range

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """Line -> comment text, for comments at the end of a line of code and for lines that are only a comment."""
    trailing: dict[int, str] = {}
    standalone: dict[int, str] = {}
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            text = token.string.lstrip("#").strip()
            (standalone if not lines[row - 1][:col].strip() else trailing)[row] = text
    return trailing, standalone


def _described(line: int, trailing: dict[int, str], standalone: dict[int, str]) -> str:
    """The comment lines right above ``line``, then the comment at its end, as one sentence."""
    above: list[str] = []
    row = line - 1
    while row in standalone:
        above.insert(0, standalone[row])
        row -= 1
    return " ".join([*above, *([trailing[line]] if line in trailing else [])])


def field_comments(cls: type) -> dict[str, str]:
    """A dataclass's field -> its declaration's comment."""
    source = textwrap.dedent(inspect.getsource(cls))
    trailing, standalone = _comments(source)
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    return {node.target.id: _described(node.lineno, trailing, standalone) for node in body.body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}


def _owner(node: ast.AST) -> tuple[type, str | None] | None:
    """The dataclass a default expression in DEFAULTS reads: ``(cls, field)`` for ``_RULE.lam`` (an instance's
    field), ``(cls, None)`` for ``CRFParams().settings()`` (all of its fields, a section); None for a literal."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
            value = vars(config).get(sub.value.id)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return type(value), sub.attr
        if isinstance(sub, ast.Name) and dataclasses.is_dataclass(cls := vars(config).get(sub.id)):
            assert isinstance(cls, type)
            return cls, None
    return None


def descriptions() -> dict[str, str]:
    """Every dotted key of DEFAULTS (sections too) -> its description, read from the declaration."""
    source = inspect.getsource(config)
    trailing, standalone = _comments(source)
    declared = next(node.value for node in ast.parse(source).body
                    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and node.target.id == "DEFAULTS")
    found: dict[str, str] = {}

    def walk(node: ast.Dict, prefix: str) -> None:
        for key_node, value in zip(node.keys, node.values):
            assert isinstance(key_node, ast.Constant) and isinstance(key_node.value, str)
            key = prefix + key_node.value
            text = _described(key_node.lineno, trailing, standalone)
            owner = _owner(value) if not isinstance(value, ast.Dict) else None
            if owner is not None and owner[1] is None:  # a section whose keys a dataclass declares
                found[key] = text
                found.update({f"{key}.{name}": comment for name, comment in field_comments(owner[0]).items()})
            else:
                if not text and owner is not None and owner[1] is not None:
                    text = field_comments(owner[0]).get(owner[1], "")
                found[key] = text
            if isinstance(value, ast.Dict):
                walk(value, key + ".")

    assert isinstance(declared, ast.Dict)
    walk(declared, "")
    return found


def _number_range(bounds: Range) -> str:
    if bounds.high is None:
        return f"{'>' if bounds.low_open else '>='} {bounds.low:g}"
    return f"in {'(' if bounds.low_open else '['}{bounds.low:g}, {bounds.high:g}{')' if bounds.high_open else ']'}"


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", list: "a list",
               dict: "a mapping"}


def accepts(key: str, default: Any) -> str:
    """What ``key`` accepts, from the validation tables beside DEFAULTS."""
    check = (inspect.getdoc(config.VALUE_CHECKS[key]) or "").strip().rstrip(".") if key in config.VALUE_CHECKS else ""
    bounds = config.BOUNDS.get(key)
    if check and bounds is None:  # the check's docstring says all of it
        return check
    if key in config.CHOICES:
        said = "one of " + ", ".join(f"`{choice}`" for choice in config.CHOICES[key])
    elif isinstance(default, list):
        said = "a list of numbers"
    elif default is None:  # the types NULLABLE_TYPES names ("a number" says int too)
        types = config.NULLABLE_TYPES.get(key, (str,))
        said = " or ".join(_TYPE_WORDS[t] for t in types if not (t is int and float in types))
    else:
        said = _TYPE_WORDS[type(default)]
    if bounds is not None:
        said += (", each " if isinstance(default, list) else " ") + _number_range(bounds)
    if check:
        said += f"; {check}"
    if key in config.NULLABLE_TYPES:
        said += ", or null"
    return said


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _cell(text: str) -> str:
    """Table-cell Markdown: a pipe would end the cell, a ``<name>`` would read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "\\<")


INTRO = """\
# Config keys

<!-- Written by `python -m boxsup.config_reference` from boxsup/config.py: edit the declaration there, then
rerun it. tests/test_docs.py fails when this page and the declaration differ. -->

A run's config is a YAML file of these keys (`configs/*.yaml`); every key has a default, and any key
can be changed for one command with `--set KEY=VALUE` (`boxsup train`, `demo`, `sweep`, `data check`,
`proposals import`; `boxsup eval` takes the `eval.crf_params.*` keys, and with `--config` the data
keys). An unknown key, a value of the wrong type or one that the *accepts* column rules out stops
the command before anything runs, with one line naming the key and where it was set (the file or the
`--set`); so does a NaN or an infinity. A key put in the wrong section is answered with the one it
may have meant. Floats may be written `1e-3` (YAML 1.1 reads that as a string; it is taken as the
number). `--set` takes several pairs after one flag as well as the flag repeated (`--set
assign.lam=3 assign.k=5`); `--set 'data.sources[0].root=PATH'` and `--set data.val.split=S` change
one field of a source.

This page is generated from the declaration itself: a key's description is the comment written
beside its default in `DEFAULTS` (`boxsup/config.py`), or, where the default is a field of the
dataclass that owns it (`LabelUpdateRule` in `boxsup/assign/rule.py`, `CRFParams` in
`boxsup/evaluation/crf.py`), that field's comment; what it accepts comes from the validation tables
beside `DEFAULTS` (`CHOICES`, `BOUNDS`, `NULLABLE_TYPES`, `VALUE_CHECKS`).
"""

OUTRO = """\
The keys of `assign` from `region_cost` to `void_k` shape the robust form of the label update
(`assign.form: robust`, the default); `assign.form: paper` is the paper's update whatever they say
(`docs/method.md`). `data.sources` and `data.val` take a mapping per source, whose fields
`docs/data.md` lists; with `data.sources`, the one-source keys (`data.root`, `data.train_split`,
`data.val_split`, `data.supervision`, `data.mask_fraction`, `data.mask_list`) are refused, not ignored.
"""


def render() -> str:
    """The whole page."""
    described = descriptions()
    flat = config.flatten(config.DEFAULTS)
    out = [INTRO]
    sections: dict[str, list[str]] = {}
    for key in flat:
        sections.setdefault(key.split(".")[0] if "." in key else "", []).append(key)
    for section, keys in sections.items():
        out.append(f"\n## {'Top level' if not section else f'`{section}`'}\n")
        if section and described.get(section):
            out.append(f"\n{described[section][0].upper()}{described[section][1:]}.\n")
        out.append("\n| key | default | accepts | meaning |\n|---|---|---|---|\n")
        for key in keys:
            out.append(f"| `{key}` | `{_yaml(flat[key])}` | {_cell(accepts(key, flat[key]))} | "
                       f"{_cell(described.get(key, ''))} |\n")
    out.append("\n## Removed keys\n\nSetting one of these is an error that says what replaced it.\n\n"
               "| key | what replaced it |\n|---|---|\n")
    for key, why in config.RETIRED_KEYS.items():
        out.append(f"| `{key}` | {_cell(why)} |\n")
    out.append("\n## Notes\n\n" + OUTRO)
    return "".join(out)


def undescribed() -> list[str]:
    """Keys of DEFAULTS whose declaration gives no description."""
    described = descriptions()
    return [key for key in config.flatten(config.DEFAULTS) if not described.get(key)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boxsup.config_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PAGE, help=f"the page to write or check (default {PAGE})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the declaration's")
    args = parser.parse_args(argv)
    if missing := undescribed():
        print(f"boxsup/config.py: no description for {', '.join(missing)}", file=sys.stderr)
        return 1
    page = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        if current != page:
            print(f"{args.out}: differs from boxsup/config.py's declaration; run python -m boxsup.config_reference",
                  file=sys.stderr)
            return 1
        return 0
    write_text_atomic(args.out, page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
