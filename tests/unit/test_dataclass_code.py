"""walg._dataclass_code: dataclasses' generated methods, compiled once and kept beside the .pyc."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from walg import _dataclass_code as cache

# Each process below keeps its bytecode, and so the table, under its own -X pycache_prefix: the
# installed walg's __pycache__ is never written by a test.
REPORT = """
import dataclasses, json, sys
import walg.settings, walg.ops.wal_push, walg.storage.file, walg.cli.main
from walg._dataclass_code import CachedExec, table_path
hook = dataclasses.exec
print(json.dumps({
    "hooked": isinstance(hook, CachedExec),
    "compiled": sum(map(len, hook.compiled.values())),
    "seen": sum(map(len, hook.seen.values())),
    "modules": sorted(hook.seen),
    "path": table_path(),
}))
"""


def run(code: str, prefix: Path, *flags: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(
        [sys.executable, "-X", f"pycache_prefix={prefix}", *flags, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_second_process_compiles_nothing_its_first_did(tmp_path: Path) -> None:
    first = run(REPORT, tmp_path)
    assert first["hooked"] is True
    assert first["compiled"] == first["seen"]
    assert isinstance(first["seen"], int) and first["seen"] >= 9 * 4
    # Only walg's own classes are cached.
    assert isinstance(first["modules"], list)
    assert all(name.startswith("walg.") for name in first["modules"])
    assert "walg.settings" in first["modules"]
    path = Path(str(first["path"]))
    assert path.is_relative_to(tmp_path) and path.stat().st_size > 0

    second = run(REPORT, tmp_path)
    assert second["compiled"] == 0
    assert second["seen"] == first["seen"]


def test_cached_code_is_what_compiling_the_text_gives(tmp_path: Path) -> None:
    run(REPORT, tmp_path)
    path = str(run(REPORT, tmp_path)["path"])
    blobs = cache.read_blobs(path)
    assert blobs, "the table was not written"
    checked = 0
    for blob in blobs.values():
        for text, code in cache.decode(blob).items():
            assert code == compile(text, "<string>", "exec", dont_inherit=True)
            checked += 1
    assert checked > 0


def test_classes_made_from_the_table_behave_as_compiled_ones(tmp_path: Path) -> None:
    code = """
import dataclasses, json
from walg.core.lsn import Segment
from walg.settings import PgConnection
seg = Segment(1, 5)
try:
    seg.segno = 2
    frozen = False
except dataclasses.FrozenInstanceError:
    frozen = True
pg = PgConnection(password="secret", port=5)
print(json.dumps({
    "eq": seg == Segment(1, 5) and seg != Segment(1, 6),
    "hash": hash(seg) == hash(Segment(1, 5)),
    "frozen": frozen,
    "repr": repr(seg),
    "secret_hidden": "secret" not in repr(pg),
    "replace": dataclasses.replace(seg, segno=9).segno,
    # As dataclasses makes them: the field types (strings under walg's own __future__ import),
    # never the names of the generated code's locals.
    "annotations": {k: str(v) for k, v in Segment.__init__.__annotations__.items()},
    "compiled": sum(map(len, dataclasses.exec.compiled.values())),
}))
"""
    cold = run(code, tmp_path)
    warm = run(code, tmp_path)
    assert cold["compiled"] != 0 and warm["compiled"] == 0
    del cold["compiled"], warm["compiled"]
    assert warm == cold
    assert warm == {
        "eq": True,
        "hash": True,
        "frozen": True,
        "repr": "Segment(timeline=1, segno=5)",
        "secret_hidden": True,
        "replace": 9,
        "annotations": {"timeline": "int", "segno": "int", "return": "None"},
    }


@pytest.mark.parametrize(
    "content",
    [b"", b"not marshal at all", b"\xe3" * 64, "truncated", "another python", "wrong types"],
)
def test_an_unreadable_table_is_ignored_and_replaced(tmp_path: Path, content: bytes | str) -> None:
    path = Path(str(run(REPORT, tmp_path)["path"]))
    good = path.read_bytes()
    if content == "truncated":
        data = good[: len(good) // 2]
    elif content == "another python":
        data = marshal.dumps((("2.7.18", 0x20712F0, 2, 1), marshal.loads(good)[1]))
    elif content == "wrong types":
        data = marshal.dumps((cache._stamp(), {"walg.core.lsn": marshal.dumps({"x": 1, 2: "y"})}))
    else:
        assert isinstance(content, bytes)
        data = content
    path.write_bytes(data)
    report = run(REPORT, tmp_path)
    assert report["compiled"] == report["seen"]  # nothing usable was read
    assert run(REPORT, tmp_path)["compiled"] == 0  # and the exit wrote a good table again


def test_a_folder_it_cannot_write_costs_nothing_but_the_compiling(tmp_path: Path) -> None:
    # A prefix under a plain file: no folder can be made there, by root either (as for the
    # user PostgreSQL runs as, in a walg that root installed without warming the table).
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    for _ in range(2):
        report = run(REPORT, blocker)
        assert report["compiled"] == report["seen"] != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_write_table_refused_leaves_no_temporary_file(tmp_path: Path) -> None:
    # A folder that cannot be created (its parent is a file) stands for any refusal, root's too.
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    path = blocker / "__pycache__" / "table.marshal"
    assert cache.write_table(str(path), {"walg.x": {}}) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_without_bytecode_writing_nothing_is_written(tmp_path: Path) -> None:
    report = run(REPORT, tmp_path, "-B")
    assert report["hooked"] is True
    assert not Path(str(report["path"])).exists()


def test_warm_writes_every_walg_class_and_drops_stale_entries(tmp_path: Path) -> None:
    path = Path(str(run(REPORT, tmp_path)["path"]))
    stale = compile("x = 1", "<string>", "exec")
    assert cache.write_table(str(path), {"walg.gone": {"x = 1": stale}})
    assert "walg.gone" in cache.read_blobs(str(path))
    code = """
import json
from walg._dataclass_code import warm, read_blobs, decode, table_path
where, count = warm()
blobs = read_blobs(table_path())
print(json.dumps({"where": where, "count": count, "modules": sorted(blobs),
                  "total": sum(len(decode(b)) for b in blobs.values())}))
"""
    report = run(code, tmp_path, "-B")  # warm writes as compileall does, whatever -B says
    assert report["where"] == str(path)
    assert report["count"] == report["total"]
    assert isinstance(report["count"], int) and report["count"] > 100
    modules = report["modules"]
    assert isinstance(modules, list)
    assert "walg.gone" not in modules
    assert {"walg.core.metadata", "walg.settings", "walg.ops.wal_push"} <= set(modules)
    assert marshal.loads(path.read_bytes())[0] == cache._stamp()


def test_walg_warm_cache_command(tmp_path: Path, walg_bin: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALG_", "WALE_", "PG"))}
    done = subprocess.run(
        [walg_bin, "warm-cache"],
        env={**env, "PYTHONPYCACHEPREFIX": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    count, _, where = done.stdout.strip().partition(" compiled dataclass methods cached in ")
    assert int(count) > 100
    assert Path(where).is_relative_to(tmp_path / "cache") and Path(where).stat().st_size > 0
    # Where nothing can be written it says so and fails.
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    done = subprocess.run(
        [walg_bin, "warm-cache"],
        env={**env, "PYTHONPYCACHEPREFIX": str(blocker)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 1
    assert (
        "cannot write" in done.stderr and "run this as the user who installed walg" in done.stderr
    )
    assert done.stdout == ""


def test_a_stand_in_exec_sees_only_what_dataclasses_hands_it() -> None:
    # Not walg's: compiled and run as exec would, never stored.
    hook = cache.CachedExec({})
    namespace: dict[str, object] = {}
    hook("def f():\n return 1", {"__name__": "elsewhere"}, namespace)
    assert callable(namespace["f"]) and hook.compiled == {} and hook.seen == {}
    # walg's: a table entry is used in place of compiling the text.
    text = "def g():\n return 'compiled'"
    stored = compile("def g():\n return 'from the table'", "<string>", "exec")
    hook = cache.CachedExec({"walg.x": __import__("marshal").dumps({text: stored})})
    globals_: dict[str, object] = {"__name__": "walg.x"}
    hook(text, globals_, namespace)
    function = namespace["g"]
    assert callable(function) and function() == "from the table"
    assert hook.compiled == {} and list(hook.seen["walg.x"]) == [text]
