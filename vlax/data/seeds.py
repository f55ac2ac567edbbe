"""Seeds for streams and elements, derived without integer overflow.

Every data seed comes from the run's `config.seed` and its context (start step, process,
dataset, camera, element) through two exact operations on Python integers, reduced
modulo 2**63 so that the result always fits TensorFlow's int64 seeds, at any step and for
any seed:

  fold(base, salt) = (base * 1_000_003 + salt) mod 2**63
  step_seed(seed, step) = (seed + 7919 * step) mod 2**63

For a fixed salt, `fold` is a bijection of [0, 2**63) (the multiplier is odd), so distinct
bases never collide. Both formulas are the ones vlax used before they were reduced: every
seed that fitted then keeps its value, so earlier runs replay bit for bit, while a resume
at step 10**6 or a seed near 2**63 no longer overflows.
"""

from __future__ import annotations

SEED_MODULUS = 2**63
_FOLD_MULTIPLIER = 1_000_003
_STEP_MULTIPLIER = 7919


def wrap(value: int) -> int:
  """`value` reduced into [0, 2**63): a valid int64 seed."""
  return int(value) % SEED_MODULUS


def fold(base: int, salt: int = 0) -> int:
  """A seed for sub-stream `salt` (process, dataset, camera ...) of a stream seeded `base`."""
  return wrap(int(base) * _FOLD_MULTIPLIER + int(salt))


def step_seed(seed: int, step: int) -> int:
  """The data seed of a run seeded `seed` whose input pipeline starts at `step`."""
  return wrap(int(seed) + _STEP_MULTIPLIER * int(step))
