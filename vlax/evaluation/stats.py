"""Small-sample statistics for evaluation results: rates with intervals, paired tests.

Closed-loop trials are few (200 episodes per condition here, 10 per cell in the papers
this compares against), so every rate is reported with a Wilson 95% interval (honest near
0 and 1, where the normal interval is not), and two policies evaluated on the same episode
seeds are compared with the exact McNemar test on their discordant episodes, which uses
the pairing that an unpaired test would throw away. Pure Python: no scipy dependency.
"""

from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, trials: int, z: float = Z95
                    ) -> tuple[float, float] | None:
  """Wilson score interval of a binomial rate (None without trials)."""
  k, n = int(successes), int(trials)
  if n <= 0:
    return None
  if not 0 <= k <= n:
    raise ValueError(f"successes must be in [0, {n}], got {k}")
  p, z2 = k / n, z * z
  denom = 1.0 + z2 / n
  centre = (p + z2 / (2 * n)) / denom
  half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
  return max(0.0, centre - half), min(1.0, centre + half)


def binomial_cdf(k: int, n: int, p: float = 0.5) -> float:
  """P(X <= k) for X ~ Binomial(n, p), summed exactly (n is a few hundred at most)."""
  if k < 0:
    return 0.0
  if k >= n:
    return 1.0
  return float(sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1)))


def mcnemar_exact(only_a: int, only_b: int) -> float:
  """Two-sided exact McNemar p-value from the discordant pair counts.

  only_a: pairs where A succeeded and B did not; only_b: the reverse. Under the null each
  discordant pair is a fair coin, so p = min(1, 2 P(X <= min(only_a, only_b))) with
  X ~ Binomial(only_a + only_b, 1/2); 1.0 when no pair is discordant.
  """
  b, c = int(only_a), int(only_b)
  if b < 0 or c < 0:
    raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
  n = b + c
  if n == 0:
    return 1.0
  return min(1.0, 2.0 * binomial_cdf(min(b, c), n, 0.5))


def paired_counts(a: Sequence[bool], b: Sequence[bool]) -> dict[str, int]:
  """Outcome counts of two policies on the same episodes (index i = the same seed)."""
  if len(a) != len(b):
    raise ValueError(f"paired outcomes need the same episodes, got {len(a)} and {len(b)}")
  pairs = [(bool(x), bool(y)) for x, y in zip(a, b)]
  return {"both": pairs.count((True, True)), "only_a": pairs.count((True, False)),
          "only_b": pairs.count((False, True)), "neither": pairs.count((False, False))}


def retention(acc: float | None, reference: float | None, chance: float | None
              ) -> float | None:
  """R = (acc - chance) / (reference - chance): 1 = all of the reference's margin over
  chance kept, 0 = back at chance; None when undefined (missing, or reference <= chance)."""
  if acc is None or reference is None or chance is None or reference <= chance:
    return None
  return (acc - chance) / (reference - chance)
