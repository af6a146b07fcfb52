"""walg._lean_imports: dataclasses without inspect until inspect is really needed."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_walg_values_load_without_inspect_and_dataclasses_still_work() -> None:
    code = """
import sys
import walg.settings, walg.ops.wal_push
print('inspect' in sys.modules, 'dataclasses' in sys.modules)
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
print(NoDoc.__doc__, dataclasses.asdict(NoDoc(1)))
import inspect
print('inspect' in sys.modules, dataclasses.inspect is inspect)
"""
    assert run(code).splitlines() == [
        "False True",
        "7 ['timeline', 'segno']",
        "frozen",
        "False",
        "NoDoc(x: int, y: str = 'a') {'x': 1, 'y': 'a'}",
        "True True",
    ]


def test_an_inspect_loaded_first_is_left_alone() -> None:
    code = """
import inspect, sys
import walg, dataclasses
print(dataclasses.inspect is inspect, sys.modules['inspect'] is inspect)
"""
    assert run(code) == "True True"


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
