"""walg._lean_imports: dataclasses without inspect, re and copy until they are really needed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from walg._lean_imports import IDENTIFIER_PATTERN, _compile_placeholder


def run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_walg_values_load_without_inspect_and_dataclasses_still_work() -> None:
    code = """
import sys
import walg.settings, walg.ops.wal_push, walg.storage.file, walg.cli.main
print(*(m in sys.modules for m in ('inspect', 're', 'enum', 'copy', 'weakref', 'dataclasses')))
import dataclasses
from walg.core.lsn import Segment
seg = Segment(1, 5)
print(dataclasses.replace(seg, segno=7).segno, [f.name for f in dataclasses.fields(seg)])
try:
    seg.segno = 1
except dataclasses.FrozenInstanceError:
    print('frozen')
print('inspect' in sys.modules)

@dataclasses.dataclass
class NoDoc:
    x: int
    y: str = 'a'

# The generated __doc__ is dataclasses' one use of inspect: it imports it now.
print(NoDoc.__doc__, 'copy' in sys.modules)

@dataclasses.dataclass
class Holder:
    'A field whose value asdict must copy deeply.'

    items: list[list[int]]

# asdict deep-copies field values: copy is imported on that first use, and really copies.
held = Holder([[1]])
out = dataclasses.asdict(held)
out['items'][0].append(2)
import copy, inspect
print(out, held.items, dataclasses.copy is copy)
print('inspect' in sys.modules, dataclasses.inspect is inspect)
"""
    assert run(code).splitlines() == [
        "False False False False False True",
        "7 ['timeline', 'segno']",
        "frozen",
        "False",
        "NoDoc(x: int, y: str = 'a') False",
        "{'items': [[1, 2]]} [[1]] True",
        "True True",
    ]


def test_an_inspect_loaded_first_is_left_alone() -> None:
    code = """
import inspect, sys
import walg, dataclasses
print(dataclasses.inspect is inspect, sys.modules['inspect'] is inspect)
"""
    assert run(code) == "True True"


def test_a_copy_loaded_first_is_used() -> None:
    code = """
import copy, sys
import walg, dataclasses
print(dataclasses.copy is copy, 'inspect' in sys.modules)
"""
    assert run(code) == "True False"


def test_a_dataclasses_loaded_first_is_left_alone() -> None:
    code = """
import dataclasses, sys
import walg
print(dataclasses.inspect is sys.modules['inspect'])
"""
    assert run(code) == "True"


def test_every_walg_dataclass_has_its_own_docstring() -> None:
    # A dataclass without one makes dataclasses import inspect while the class is created.
    code = """
import dataclasses, importlib, pkgutil, walg
missing = []
for info in pkgutil.walk_packages(walg.__path__, 'walg.'):
    if info.name.endswith('__main__'):
        continue
    module = importlib.import_module(info.name)
    for obj in vars(module).values():
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == info.name:
            if '__doc__' not in vars(obj) or (obj.__doc__ or '').startswith(obj.__name__ + '('):
                missing.append(f'{info.name}.{obj.__name__}')
print(missing)
"""
    assert run(code) == "[]"


def test_string_annotations_are_still_told_apart_without_re(tmp_path: Path) -> None:
    """ClassVar, InitVar and KW_ONLY written as strings: dataclasses' one use of ``re``."""
    (tmp_path / "values.py").write_text(
        """
from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, InitVar, dataclass


@dataclass(frozen=True)
class Plain:
    \"\"\"Unqualified names, as from-imports bring them.\"\"\"

    a: int
    b: InitVar[int] = 0
    _: KW_ONLY
    c: int = 1


@dataclass(frozen=True)
class Qualified:
    \"\"\"Names through the module.\"\"\"

    a: int
    b: dataclasses.InitVar[int] = 0
    _: dataclasses.KW_ONLY
    c: int = 1
"""
    )
    code = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
import walg, dataclasses, values
for cls in (values.Plain, values.Qualified):
    fields = dataclasses.fields(cls)
    print([f.name for f in fields], [f.name for f in fields if f.kw_only])
print('re' in sys.modules, 'enum' in sys.modules)
import typing

@dataclasses.dataclass
class WithClassVar:
    \"\"\"typing.ClassVar as a string.\"\"\"

    a: 'typing.ClassVar[int]' = 1
    b: 'int' = 2

print([f.name for f in dataclasses.fields(WithClassVar)])
"""
    assert run(code).splitlines() == [
        "['a', 'c'] ['c']",
        "['a', 'c'] ['c']",
        "False False",
        "['b']",
    ]


def test_the_pattern_replaced_is_the_one_dataclasses_compiles() -> None:
    # Loaded after re, dataclasses compiles its pattern for real; if a Python changes it, the
    # placeholder compiles the new one on first use (correct, only slower) and this test says so.
    code = """
import re, dataclasses
from walg._lean_imports import IDENTIFIER_PATTERN
print(dataclasses._MODULE_IDENTIFIER_RE.pattern == IDENTIFIER_PATTERN)
"""
    assert run(code) == "True"


# Whitespace, word characters of several kinds, and characters that are neither.
_CHARS = " \t\n\x1c\u2003\u00a0._aZ09\u0663\u00e9\u01c5\u00b2\u0300[]'\"-,|"


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=st.sampled_from(_CHARS), max_size=12) | st.text(max_size=12))
def test_identifier_matcher_agrees_with_re(text: str) -> None:
    expected = re.compile(IDENTIFIER_PATTERN).match(text)
    got = _compile_placeholder(IDENTIFIER_PATTERN).match(text)  # type: ignore[attr-defined]
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.group(1), got.group(2)) == (expected.group(1), expected.group(2))


def test_any_other_pattern_compiles_on_first_use() -> None:
    pattern = _compile_placeholder(r"a(b+)", re.IGNORECASE)
    match = pattern.fullmatch("ABBB")  # type: ignore[attr-defined]
    assert match is not None and match.group(1) == "BBB"
    assert pattern.fullmatch("ac") is None  # type: ignore[attr-defined]
