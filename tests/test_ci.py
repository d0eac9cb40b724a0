"""CI (.ci/run) runs what the README says: the linters, then the README's test command on the whole
suite, and prints the slowest tests so that the suite's wall time stays in view."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CI = (ROOT / ".ci" / "run").read_text()
README = (ROOT / "README.md").read_text()


def commands() -> list[str]:
    """.ci/run's command lines, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", CI)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_ci_fails_when_any_step_fails():
    assert "set -euo pipefail" in commands()


def test_ci_runs_both_linters():
    lines = commands()
    assert '"$py" -m ruff check .' in lines and '"$py" -m ruff format --check .' in lines


def test_ci_runs_the_readmes_test_command_on_everything_and_shows_the_slowest_tests():
    readme_command = re.search(r"```bash\n\.venv/bin/python -m (pytest[^\n]*)\n```", README).group(1)
    assert "--all" in readme_command.split()  # the whole suite, slow tests included
    last = commands()[-1]
    assert last == f'"$py" -m {readme_command} --durations=20'
