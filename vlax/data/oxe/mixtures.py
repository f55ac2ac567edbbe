"""Named dataset mixtures: lists of (registered dataset name, sampling weight).

Weights are relative sampling weights before any scaling by dataset size (the mixture
builder may multiply them by each dataset's number of transitions, as Octo does).
"""

from __future__ import annotations

import difflib

from vlax.data.oxe import metaworld as _mw
from vlax.errors import VlaxError

# Octo's "magic soup" (25 datasets). Octo reads BridgeData V2 from the 1.0.0 release.
_MAGIC_SOUP = (
    ("fractal20220817_data", 0.54087122203),
    ("kuka", 0.8341046294),
    ("bridge_dataset", 1.0),
    ("taco_play", 2.0),
    ("jaco_play", 1.0),
    ("berkeley_cable_routing", 1.0),
    ("roboturk", 2.0),
    ("nyu_door_opening_surprising_effectiveness", 1.0),
    ("viola", 2.0),
    ("berkeley_autolab_ur5", 2.0),
    ("toto", 1.0),
    ("language_table", 0.1),
    ("stanford_hydra_dataset_converted_externally_to_rlds", 2.0),
    ("austin_buds_dataset_converted_externally_to_rlds", 1.0),
    ("nyu_franka_play_dataset_converted_externally_to_rlds", 3.0),
    ("furniture_bench_dataset_converted_externally_to_rlds", 0.1),
    ("ucsd_kitchen_dataset_converted_externally_to_rlds", 2.0),
    ("austin_sailor_dataset_converted_externally_to_rlds", 1.0),
    ("austin_sirius_dataset_converted_externally_to_rlds", 1.0),
    ("bc_z", 0.2),
    ("dlr_edan_shared_control_converted_externally_to_rlds", 1.0),
    ("iamlab_cmu_pickup_insert_converted_externally_to_rlds", 1.0),
    ("utaustin_mutex", 1.0),
    ("berkeley_fanuc_manipulation", 2.0),
    ("cmu_stretch", 1.0),
)

# OpenVLA's "magic soup++": the soup without nyu_door, plus FMB, Dobb-E and DROID.
_MAGIC_SOUP_PLUS = tuple(
    (n, w) for n, w in _MAGIC_SOUP
    if n not in ("nyu_door_opening_surprising_effectiveness", "bc_z")) + (
        ("bc_z", 0.2),
        ("fmb_dataset", 1.0),
        ("dobbe", 0.2),
        ("droid", 0.06),
    )

MIXTURES: dict[str, tuple[tuple[str, float], ...]] = {
    "oxe_magic_soup": _MAGIC_SOUP,
    "oxe_magic_soup_plus": _MAGIC_SOUP_PLUS,
    "bridge_only": (("bridge_dataset", 1.0),),
    "bridge_oxe_only": (("bridge", 1.0),),
    "fractal_only": (("fractal20220817_data", 1.0),),
    # The debug config's built-in data (registered by vlax.data.oxe.toy).
    "toy": (("toy_reach_a", 1.0), ("toy_reach_b", 1.0)),
    # A robot the debug pretraining never saw (experiments/finetune_new_robot.py).
    "toy_new_robot": (("toy_reach_c", 1.0),),
    # Meta-World expert demos (registered by vlax.data.oxe.metaworld).
    "metaworld_mt10": tuple((_mw.dataset_name(t), 1.0) for t in _mw.MT10),
    "metaworld_mt10_pretrain7": tuple((_mw.dataset_name(t), 1.0) for t in _mw.MT10
                                      if t not in _mw.HELDOUT3),
    "metaworld_mt10_heldout3": tuple((_mw.dataset_name(t), 1.0) for t in _mw.HELDOUT3),
}


def get_mixture(name: str) -> list[tuple[str, float]]:
  """The (dataset_name, weight) list of a named mixture; VlaxError for unknown names."""
  if name not in MIXTURES:
    close = difflib.get_close_matches(name, list(MIXTURES), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise VlaxError(f"unknown mixture {name!r}{hint}; known: {', '.join(sorted(MIXTURES))}")
  return list(MIXTURES[name])


def list_mixtures() -> list[str]:
  return sorted(MIXTURES)
