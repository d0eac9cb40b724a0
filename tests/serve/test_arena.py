"""The arena: ratings against a direct Bradley-Terry fit, Elo by hand, votes that survive a reopen,
the leaderboard command, and a battle through the HTTP API."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from minigpt.serve import arena
from minigpt.serve.arena import Vote

ROOT = Path(__file__).resolve().parents[2]


def fixed_votes() -> list[Vote]:
    rng = random.Random(0)
    strength = {"a": 2.0, "b": 1.0, "c": 0.5, "d": 0.3}
    votes = []
    for _ in range(300):
        left, right = rng.sample(sorted(strength), 2)
        u = rng.random()
        p = strength[left] / (strength[left] + strength[right])
        winner = "tie" if u < 0.1 else "both_bad" if u < 0.15 else "left" if rng.random() < p else "right"
        votes.append(Vote(left, right, winner))
    return votes


def newton_bradley_terry(votes: list[Vote], prior: float) -> dict[str, float]:
    """The Bradley-Terry maximum-likelihood fit by Newton's method on log-strengths (one pinned at 0):
    a tie is half a win each, and `prior` virtual tied games join every pair."""
    names = sorted({v.left for v in votes} | {v.right for v in votes})
    games = [(v.left, v.right, arena.SCORE[v.winner], 1.0) for v in votes]
    games += [(a, b, 0.5, prior) for a in names for b in names if a < b]
    free = names[1:]
    theta = dict.fromkeys(names, 0.0)
    for _ in range(100):
        grad = dict.fromkeys(free, 0.0)
        hess = {(i, j): 0.0 for i in free for j in free}
        for a, b, s, w in games:
            p = 1 / (1 + math.exp(theta[b] - theta[a]))
            for x, sign in ((a, 1), (b, -1)):
                if x in grad:
                    grad[x] += w * sign * (s - p)
            for x, sx in ((a, 1), (b, -1)):
                for y, sy in ((a, 1), (b, -1)):
                    if x in grad and y in grad:
                        hess[x, y] -= w * sx * sy * p * (1 - p)
        # solve hess @ step = -grad (Gaussian elimination; the matrix is small and negative definite)
        n = len(free)
        m = [[hess[free[i], free[j]] for j in range(n)] + [-grad[free[i]]] for i in range(n)]
        for c in range(n):
            for r in range(c + 1, n):
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c], strict=True)]
        step = [0.0] * n
        for r in reversed(range(n)):
            step[r] = (m[r][n] - sum(m[r][k] * step[k] for k in range(r + 1, n))) / m[r][r]
        for i, name in enumerate(free):
            theta[name] += step[i]
        if max(abs(x) for x in step) < 1e-12:
            break
    mean = sum(theta.values()) / len(names)
    return {m: 1000 + 400 / math.log(10) * (theta[m] - mean) for m in names}


@pytest.mark.parametrize("prior", [0.0, 1.0, 5.0])
def test_bradley_terry_equals_a_direct_newton_fit(prior):
    votes = fixed_votes()
    got = arena.bradley_terry(votes, prior=prior)
    expected = newton_bradley_terry(votes, prior)
    assert got == pytest.approx(expected, abs=1e-6)
    assert [m for m, _ in sorted(got.items(), key=lambda kv: -kv[1])] == ["a", "b", "c", "d"]


def test_a_model_without_a_win_needs_the_prior():
    votes = [Vote("a", "b", "left")] * 3
    with pytest.raises(ValueError, match="prior"):
        arena.bradley_terry(votes, prior=0)
    rated = arena.bradley_terry(votes, prior=1)
    assert rated["a"] > 1000 > rated["b"] and math.isfinite(rated["b"])


def test_elo_replays_the_votes_in_order():
    votes = [Vote("a", "b", "left"), Vote("b", "a", "tie")]
    got = arena.elo_ratings(votes, ["a", "b", "c"])
    a1, b1 = 1000 + 16 * 0.5, 1000 - 16 * 0.5  # equal ratings: expected 0.5
    expected_b = 1 / (1 + 10 ** ((a1 - b1) / 400))
    b2 = b1 + 16 * (0.5 - expected_b)
    assert got == pytest.approx({"a": a1 + (b1 - b2), "b": b2, "c": 1000.0})


def test_leaderboard_intervals_are_repeatable_and_hold_the_estimates():
    votes = fixed_votes()
    board = arena.leaderboard(votes, ["a", "b", "c", "d", "e"], rounds=50)
    assert board == arena.leaderboard(votes, ["a", "b", "c", "d", "e"], rounds=50)
    by = {s.model: s for s in board}
    assert by["e"].games == 0 and by["e"].elo == 1000
    for s in board[:4]:
        assert s.bt_low <= s.bt <= s.bt_high and s.elo_low <= s.elo_high
        assert s.games == sum(s.model in (v.left, v.right) for v in votes)
    assert by["a"].bt_low > by["d"].bt_high  # 300 votes tell the strongest from the weakest


def test_votes_survive_a_reopen_and_the_command_prints_them(tmp_path):
    db = tmp_path / "sub" / "votes.sqlite"
    store = arena.VoteStore(db)
    for v in fixed_votes()[:20]:
        store.add(v.left, v.right, v.winner)
    with pytest.raises(ValueError, match="outcome"):
        store.add("a", "b", "draw")
    store.close()
    assert arena.VoteStore(db).votes() == fixed_votes()[:20] == arena.open_votes(db)
    out = subprocess.run(
        [sys.executable, "-m", "minigpt.serve.arena", "--db", str(db), "--rounds", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("20 votes") and all(m in out.stdout for m in "abcd")


@pytest.mark.parametrize(
    "make, message",
    [(lambda p: None, "no such file"), (lambda p: p.write_text("not sqlite " * 100), "not an arena vote file")],
)
def test_the_command_refuses_a_missing_or_foreign_file(tmp_path, make, message):
    path = tmp_path / "votes.sqlite"
    make(path)
    before = path.read_bytes() if path.exists() else None
    out = subprocess.run(
        [sys.executable, "-m", "minigpt.serve.arena", "--db", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and message in out.stderr and out.stderr.count("\n") == 1
    assert (path.read_bytes() if path.exists() else None) == before  # nothing created or changed


def read_stream(response: httpx.Response) -> list[dict]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


def test_a_battle_through_the_api(server):
    url, models = server
    r = httpx.post(f"{url}/arena/api/battles", json={"prompt": "Say hi 👋", "max_tokens": 8}, timeout=30)
    assert r.status_code == 200
    battle = r.json()["id"]
    for side in ("left", "right"):
        with httpx.stream("POST", f"{url}/arena/api/battles/{battle}/answers/{side}", timeout=30) as response:
            events = read_stream(response)
        assert events[-1]["finish_reason"] in ("stop", "length")
        assert all("model" not in e for e in events)  # anonymous until the vote
    bad = httpx.post(f"{url}/arena/api/battles/{battle}/vote", json={"winner": "draw"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "winner"
    r = httpx.post(f"{url}/arena/api/battles/{battle}/vote", json={"winner": "left"}, timeout=30)
    assert r.status_code == 200 and {r.json()["left"], r.json()["right"]} == set(models)
    again = httpx.post(f"{url}/arena/api/battles/{battle}/vote", json={"winner": "right"}, timeout=30)
    assert again.status_code == 409
    board = httpx.get(f"{url}/arena/api/leaderboard", timeout=30).json()
    assert board["votes"] >= 1 and {m["model"] for m in board["models"]} == set(models)
    page = httpx.get(f"{url}/arena/leaderboard", timeout=30)
    assert page.status_code == 200 and "Bradley-Terry" in page.text
    assert httpx.post(f"{url}/arena/api/battles/nope/vote", json={"winner": "tie"}).status_code == 404
    assert httpx.post(f"{url}/arena/api/battles", json={"prompt": "  "}).status_code == 400
