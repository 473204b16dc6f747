"""Coverage of the 95 % intervals of `esa_nb.stats` by simulation: per seed (`paired_delta`, 16 blocks) and pooled over 3 seeds
(`pool_condition`). Fixed seeds, so every run gives the same numbers; run with `-s` to see them."""
import math

import numpy as np
import pytest

from esa_nb.stats import paired_delta, pool_condition

N_SETS, N_BLOCKS, N_BOOT = 1000, 16, 999  # simulated evaluation sets per case, blocks per set, bootstrap draws


def _effects(kind:str, r:np.random.Generator, n:int)->tuple[np.ndarray, float]:
    "Per-token ΔNLL of each of n blocks, and its true mean (the estimand: tokens are drawn independently of the effect)."
    if kind == "normal": return r.normal(0.05, 0.05, n), 0.05
    if kind.startswith("lognormal"):  # 0.02·exp(N(0, σ²)): right-skewed, skewness 1.75 at σ = 0.5, 6.2 at σ = 1
        s = float(kind.split("_")[1]); return 0.02 * np.exp(r.normal(0, s, n)), 0.02 * math.exp(s * s / 2)
    if kind == "rare":  # one block in five carries a 50x larger effect
        return r.normal(0.01, 0.01, n) + 0.5 * (r.random(n) < 0.2), 0.01 + 0.2 * 0.5
    raise ValueError(kind)


def _blocks(r:np.random.Generator, n:int)->tuple[np.ndarray, np.ndarray]:
    "Token counts and baseline NLL sums of n blocks."
    tok = r.integers(400, 513, n).astype(float)
    return tok, tok * (3 + r.normal(0, 0.3, n))


def per_seed_coverage(kind:str, seed:int=0)->float:
    "Share of N_SETS simulated evaluation sets whose `paired_delta` interval holds the true ΔNLL."
    r, hits = np.random.default_rng(seed), 0
    for i in range(N_SETS):
        tok, base = _blocks(r, N_BLOCKS); eff, mu = _effects(kind, r, N_BLOCKS)
        lo, hi = paired_delta(base, tok, base + eff * tok, n_boot=N_BOOT, seed=i)["delta_nll_ci"]
        hits += lo <= mu <= hi
    return hits / N_SETS


def pooled_coverage(sd_seed:float, sd_block:float, sd_noise:float, n_seeds:int=3, seed:int=0)->float:
    "Coverage of `pool_condition`'s interval; per-token effect 0.05 + u_seed + v_block (shared by the seeds) + noise."
    r, hits, mu = np.random.default_rng(seed), 0, 0.05
    for i in range(N_SETS):
        tok, base = _blocks(r, N_BLOCKS)
        u, v, e = r.normal(0, sd_seed, n_seeds), r.normal(0, sd_block, N_BLOCKS), r.normal(0, sd_noise, (n_seeds, N_BLOCKS))
        per = {s: {"ppl": 1.0, "nll": 0.0, "token_accuracy": 0.0, "ppl_change": 0.0, "accuracy_drop": 0.0, "delta_nll": 0.0,
                   "delta_nll_ci": [0.0, 0.0], "n_weights": 1, "_block_nll_sum": base + (mu + u[s] + v + e[s]) * tok}
               for s in range(n_seeds)}
        P = pool_condition(per, {"block_nll_sum": base, "block_tokens": tok, "ppl": 1.0, "nll": 0.0, "token_accuracy": 0.0},
                           n_boot=N_BOOT)
        hits += P["delta_nll_ci"][0] <= mu <= P["delta_nll_ci"][1]
    return hits / N_SETS


@pytest.mark.parametrize("kind,floor", [("normal", 0.93), ("lognormal_0.5", 0.93), ("rare", 0.90),
                                        ("lognormal_1.0", 0.88)])  # the last: heavy skew, a known limit at 16 blocks
def test_per_seed_coverage(kind, floor):
    cov = per_seed_coverage(kind)
    print(f"\ncoverage per seed, {kind}, {N_BLOCKS} blocks, {N_SETS} sets: {cov:.3f} (floor {floor})")
    assert cov >= floor


@pytest.mark.parametrize("case,sds", [("seeds differ", (0.05, 0.02, 0.05)), ("shared blocks dominate", (0.01, 0.05, 0.02))])
def test_pooled_coverage(case, sds):
    cov = pooled_coverage(*sds)
    print(f"\ncoverage pooled over 3 seeds, {case} (sd seed, block, noise = {sds}), {N_SETS} runs: {cov:.3f}")
    assert cov >= 0.90
