"""The README's layout table names every part of the package, so it cannot fall behind the tree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Layout") :].split("\n## ", 1)[0]


def test_every_package_part_and_script_is_in_the_layout_table():
    section = layout_section()
    named = set(re.findall(r"[\w/]+(?:\.py|/)", section))
    parts = [f"minigpt/{p.name}/" for p in (ROOT / "minigpt").iterdir() if (p / "__init__.py").is_file()]
    parts += [p.name for p in (ROOT / "minigpt").glob("*.py") if p.name != "__init__.py"]
    parts += [p.name for p in ROOT.glob("*.py")]
    missing = [p for p in parts if not any(n == p or n.endswith("/" + p) or n.startswith(p) for n in named)]
    assert not missing, f"README's layout table does not name {missing}"


def test_the_model_files_are_each_named():
    section = layout_section()
    for path in (ROOT / "minigpt" / "model").glob("*.py"):
        if path.name != "__init__.py":
            assert path.name in section, path.name
