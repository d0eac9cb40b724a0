"""bench/common.py: the log, the atomic writers, and an import that leaves torch out."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

sys.path.insert(0, str(ROOT))
from bench import common  # noqa: E402


def test_log_is_one_timestamped_line_on_stderr(capsys):
    common.log("wrote results/x.json")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] wrote results/x\.json\n", captured.err)


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "new" / "r.json"
    assert common.write_json(path, {"a": 1}) == path
    assert path.read_text() == '{\n  "a": 1\n}\n'
    common.write_json(path, {"where": tmp_path}, default=str)
    assert json.loads(path.read_text()) == {"where": str(tmp_path)}
    with pytest.raises(TypeError):  # not JSON, and no default: the old file stays
        common.write_json(path, {"where": tmp_path})
    assert json.loads(path.read_text()) == {"where": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = common.write_text(tmp_path / "summary.md", "old\n")

    def half_then_fail(f):
        f.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        common.atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_slug():
    assert common.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_importing_it_or_the_gpu_suite_imports_no_torch():
    """The GPU suite's supervising process must run where torch cannot be imported: of minigpt it
    loads only the plain-Python atomic writer (minigpt.files)."""
    code = (
        "import sys; import bench.common, bench.supervisor, bench.gpu_suite; "
        "bad = sorted(m for m in sys.modules if m in ('torch', 'numpy') or m.startswith('minigpt.')"
        " and m != 'minigpt.files'); print(bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
