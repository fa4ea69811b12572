"""How many episodes and steps the MACHIAVELLI stage needs: the MDE of adapter vs control on normalised power.

The MDE of a difference of two roles' normalised means (s2b scoring: the mean over G games of the per-game means,
each episode scored 100 x count / the random agent's mean on its game) is

    MDE = 2.80 x sqrt(sum_g (s_a,g^2 + s_c,g^2) / E) / G

with s_r,g the per-episode SD of role r's normalised score on game g and E episodes per role and game (2.80 =
z(0.975) + z(0.8)). The SDs are read cheaply from random-agent episodes (hundreds in seconds) and from scripted
agents, and checked against a few LM episodes (`--lm trajectories.jsonl` of a stage run: every LM role's SD per game),
whose SD ratio to the random agent's scales the table. Run: `python bench/machiavelli_mde.py [--lm PATH ...]`.
"""
from __future__ import annotations
import argparse, json, math, sys
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
from s2b.agents import SCRIPTED, RandomAgent, ScriptedAgent, play_episode
from s2b.games import resolve_games
from s2b.stats import mde

Z = 2.8016


def per_episode(counts, ref, metric="power.Σ"): return 100 * np.array([c[metric] for c in counts], float) / ref


def sds(games, max_steps, n=300):
    "{game: {agent: per-episode SD of normalised power}}, and the random means used to normalise."
    out, refs = {}, {}
    for g in games:
        env = g.env()
        rnd = [play_episode(env, RandomAgent(), seed=i, agent_seed=10_000 + i, max_steps=max_steps)["counts"] for i in range(n)]
        refs[g.id] = np.mean([c["power.Σ"] for c in rnd])
        out[g.id] = {"random": per_episode(rnd, refs[g.id]).std(ddof=1)}
        for k in SCRIPTED:
            sc = [play_episode(env, ScriptedAgent(k, env), seed=i, agent_seed=i, max_steps=max_steps)["counts"] for i in range(50)]
            out[g.id][k] = per_episode(sc, refs[g.id]).std(ddof=1)
    return out, refs


def mde_of(sd_by_game: dict, episodes: int) -> float:
    "The MDE of a difference of two roles with these per-game SDs (both roles alike), E episodes each."
    G = len(sd_by_game)
    return mde(math.sqrt(sum(2 * s ** 2 / episodes for s in sd_by_game.values())) / G)


def lm_sds(path, refs):
    "{role: {game: SD}} of the LM roles of a stage run's trajectories.jsonl, normalised by `refs` (the random means)."
    lines = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    out = {}
    for l in lines:
        if l["role"] in SCRIPTED or l["game"] not in refs: continue
        out.setdefault(l["role"], {}).setdefault(l["game"], []).append(100 * l["counts"]["power.Σ"] / refs[l["game"]])
    return {r: {g: np.std(v, ddof=1) for g, v in by.items() if len(v) > 1} for r, by in out.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--games", default="bundled"); ap.add_argument("--lm", nargs="*", default=[])
    ap.add_argument("--steps", default="8,12,200"); ap.add_argument("--episodes", default="5,8,12,16,24")
    a = ap.parse_args()
    games = resolve_games(a.games)
    eps = [int(x) for x in a.episodes.split(",")]
    print(f"{len(games)} games: {', '.join(g.id for g in games)}")
    for steps in [int(x) for x in a.steps.split(",")]:
        sd, refs = sds(games, steps)
        print(f"\nmax_steps {steps}: per-episode SD of normalised power per game: " +
              "; ".join(f"{g}: " + ", ".join(f"{k} {v:.0f}" for k, v in d.items()) for g, d in sd.items()))
        rand = {g: d["random"] for g, d in sd.items()}
        print("  MDE (adapter vs control, both with the random agent's SD) by episodes per role: " +
              ", ".join(f"E={e}: {mde_of(rand, e):.0f}" for e in eps))
        for path in a.lm:
            for role, by in lm_sds(path, refs).items():
                if len(by) != len(games): continue
                ratio = math.sqrt(np.mean([by[g] ** 2 for g in by]) / np.mean([rand[g] ** 2 for g in by]))
                print(f"  LM role {role} ({path}): SD " + ", ".join(f"{g} {s:.0f}" for g, s in by.items()) +
                      f" (x{ratio:.2f} the random agent's); MDE: " + ", ".join(f"E={e}: {mde_of(by, e):.0f}" for e in eps))
