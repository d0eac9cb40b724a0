"""The arena's votes (SQLite) and the ratings they give: Elo and Bradley-Terry, with bootstrap intervals.

A vote is one battle: the models shown left and right and the outcome, "left", "right", "tie" or
"both_bad" (a tie for the ratings). Each vote is committed in its own transaction, so a vote
answered is a vote kept.

- Elo: every model starts at 1000 and the votes are replayed in order, each moving the two ratings by
  K (ELO_K) times the surprise (score - expected score, on the scale 400 * log10 of the odds).
- Bradley-Terry: the maximum-likelihood strengths p with P(i beats j) = p_i / (p_i + p_j), a tie
  counting half a win to each side, found by Hunter's MM iteration; shown as 1000 + 400 * log10(p_i)
  with the strengths' geometric mean at 1000. `prior` adds that many virtual tied games between
  every pair of models (default 1), so a model that never won still has a finite rating.
- Intervals: both ratings recomputed on `rounds` resamples of the votes (drawn with replacement,
  fixed seed); the 2.5th and 97.5th percentiles.

    python -m minigpt.serve.arena --db ~/.cache/minigpt/arena.sqlite     # the leaderboard, no server needed
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import math
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

OUTCOMES = ("left", "right", "tie", "both_bad")
SCORE = {"left": 1.0, "right": 0.0, "tie": 0.5, "both_bad": 0.5}  # the left model's score
ELO_K = 16
ELO_START = 1000.0
DEFAULT_DB = Path("~/.cache/minigpt/arena.sqlite")


@dataclasses.dataclass(frozen=True)
class Vote:
    left: str
    right: str
    winner: str  # one of OUTCOMES


class VoteStore:
    """The votes in a SQLite file (created with its folder if missing); add() commits each vote."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        with self.db:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS votes (id INTEGER PRIMARY KEY, time REAL NOT NULL, "
                "left TEXT NOT NULL, right TEXT NOT NULL, winner TEXT NOT NULL)"
            )

    def add(self, left: str, right: str, winner: str) -> None:
        if winner not in OUTCOMES:
            raise ValueError(f"the outcome must be one of {', '.join(OUTCOMES)}, got {winner!r}")
        with self.lock, self.db:  # one transaction: committed on leaving, rolled back on an error
            self.db.execute(
                "INSERT INTO votes (time, left, right, winner) VALUES (?, ?, ?, ?)", (time.time(), left, right, winner)
            )

    def votes(self) -> list[Vote]:
        with self.lock:
            return read_votes(self.db)

    def close(self) -> None:
        self.db.close()


def read_votes(db: sqlite3.Connection) -> list[Vote]:
    rows = db.execute("SELECT left, right, winner FROM votes ORDER BY id").fetchall()
    return [Vote(*row) for row in rows]


def open_votes(path: str | Path) -> list[Vote]:
    """The votes of an existing file, opened read-only (ValueError, one line, if it is not an arena file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: no such file (the server writes it with --arena-db)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return read_votes(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path}: not an arena vote file ({e})") from None


# ----------------------------------------------------------------------------------------------
# Ratings


def elo_ratings(votes: Sequence[Vote], models: Sequence[str] = (), k: float = ELO_K) -> dict[str, float]:
    """Online Elo over the votes in order, every model starting at ELO_START."""
    rating = {m: ELO_START for m in models}
    for v in votes:
        a, b = rating.setdefault(v.left, ELO_START), rating.setdefault(v.right, ELO_START)
        expected = 1.0 / (1.0 + 10 ** ((b - a) / 400))
        delta = k * (SCORE[v.winner] - expected)
        rating[v.left], rating[v.right] = a + delta, b - delta
    return rating


def bradley_terry(
    votes: Sequence[Vote], models: Sequence[str] = (), prior: float = 1.0, tol: float = 1e-10, max_iter: int = 10000
) -> dict[str, float]:
    """Bradley-Terry ratings (1000 + 400 log10 p, geometric mean 1000) by Hunter's MM iteration:
    p_i <- W_i / sum_j N_ij / (p_i + p_j), W_i the wins of i (ties half), N_ij the games of i and j."""
    names = sorted(set(models) | {v.left for v in votes} | {v.right for v in votes})
    index = {m: i for i, m in enumerate(names)}
    M = len(names)
    wins = [0.0] * M
    games = [[0.0] * M for _ in range(M)]
    for v in votes:
        a, b, s = index[v.left], index[v.right], SCORE[v.winner]
        wins[a] += s
        wins[b] += 1 - s
        games[a][b] += 1
        games[b][a] += 1
    for a in range(M):  # virtual ties between every pair
        for b in range(M):
            if a != b:
                wins[a] += prior / 2
                games[a][b] += prior
    if any(w <= 0 for w in wins):
        raise ValueError("a model with no win has no finite Bradley-Terry rating; use prior > 0")
    p = [1.0] * M
    for _ in range(max_iter):
        new = []
        for i in range(M):
            denom = sum(games[i][j] / (p[i] + p[j]) for j in range(M) if games[i][j])
            new.append(wins[i] / denom if denom else p[i])
        scale = math.exp(sum(math.log(x) for x in new) / M)
        new = [x / scale for x in new]
        change = max(abs(math.log(x / y)) for x, y in zip(new, p, strict=True))
        p = new
        if change < tol:
            break
    return {m: ELO_START + 400 * math.log10(p[index[m]]) for m in names}


@dataclasses.dataclass
class Standing:
    model: str
    games: int
    wins: float  # ties count half
    elo: float
    elo_low: float
    elo_high: float
    bt: float
    bt_low: float
    bt_high: float


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    at = q * (len(values) - 1)
    lo, hi = math.floor(at), math.ceil(at)
    return values[lo] + (values[hi] - values[lo]) * (at - lo)


def leaderboard(
    votes: Sequence[Vote], models: Sequence[str] = (), rounds: int = 200, prior: float = 1.0, seed: int = 0
) -> list[Standing]:
    """Every model's games, wins, Elo and Bradley-Terry ratings with 95% bootstrap intervals, best first."""
    names = sorted(set(models) | {v.left for v in votes} | {v.right for v in votes})
    elo, bt = elo_ratings(votes, names), bradley_terry(votes, names, prior)
    rng = random.Random(seed)
    samples_elo: dict[str, list[float]] = {m: [] for m in names}
    samples_bt: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(rounds if votes else 0):
        resample = [votes[rng.randrange(len(votes))] for _ in votes]
        for m, r in elo_ratings(resample, names).items():
            samples_elo[m].append(r)
        for m, r in bradley_terry(resample, names, prior, tol=1e-8).items():
            samples_bt[m].append(r)
    board = []
    for m in names:
        played = [v for v in votes if m in (v.left, v.right)]
        wins = sum(SCORE[v.winner] if v.left == m else 1 - SCORE[v.winner] for v in played)

        def interval(samples, point):
            return (_percentile(samples, 0.025), _percentile(samples, 0.975)) if samples else (point, point)

        elo_lo, elo_hi = interval(samples_elo[m], elo[m])
        bt_lo, bt_hi = interval(samples_bt[m], bt[m])
        board.append(Standing(m, len(played), wins, elo[m], elo_lo, elo_hi, bt[m], bt_lo, bt_hi))
    return sorted(board, key=lambda s: -s.bt)


def leaderboard_text(board: list[Standing], n_votes: int) -> str:
    lines = [f"{n_votes} votes; 95% bootstrap intervals", ""]
    header = f"{'model':<28} {'games':>6} {'wins':>6}  {'Bradley-Terry':>22}  {'Elo':>22}"
    lines += [header, "-" * len(header)]
    for s in board:
        bt = f"{s.bt:7.1f} [{s.bt_low:6.1f}, {s.bt_high:6.1f}]"
        elo = f"{s.elo:7.1f} [{s.elo_low:6.1f}, {s.elo_high:6.1f}]"
        lines.append(f"{s.model:<28} {s.games:>6} {s.wins:>6.1f}  {bt:>22}  {elo:>22}")
    return "\n".join(lines)


def leaderboard_html(board: list[Standing]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(s.model)}</td><td>{s.games}</td><td>{s.wins:g}</td>"
        f"<td>{s.bt:.1f}</td><td>{s.bt_low:.1f} – {s.bt_high:.1f}</td>"
        f"<td>{s.elo:.1f}</td><td>{s.elo_low:.1f} – {s.elo_high:.1f}</td></tr>"
        for s in board
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>minigpt arena: leaderboard</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
        "td,th{padding:.4em .8em;border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child"
        "{text-align:left}</style></head><body><h1>Leaderboard</h1>"
        "<p>Bradley-Terry (maximum likelihood) and Elo (K=16, votes in order) ratings; ties and 'both bad' count "
        "half a win each; 95% intervals from 200 bootstrap resamples of the votes. <a href='/arena'>Back to the "
        "arena</a></p><table><tr><th>model</th><th>games</th><th>wins</th><th>Bradley-Terry</th><th>95% CI</th>"
        f"<th>Elo</th><th>95% CI</th></tr>{rows}</table></body></html>"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m minigpt.serve.arena", description="Print the arena's leaderboard from its vote file."
    )
    p.add_argument("--db", default=str(DEFAULT_DB), help=f"the vote file serve.py writes (default {DEFAULT_DB})")
    p.add_argument("--rounds", type=int, default=200, help="bootstrap resamples for the intervals (default 200)")
    args = p.parse_args(argv)
    try:
        if args.rounds < 0:
            raise ValueError(f"--rounds must be >= 0, got {args.rounds}")
        votes = open_votes(args.db)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(leaderboard_text(leaderboard(votes, rounds=args.rounds), len(votes)))
    return 0


if __name__ == "__main__":
    from minigpt import entrypoint

    entrypoint.start()
    sys.exit(entrypoint.run(main))
