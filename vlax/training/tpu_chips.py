"""TPU chip facts and accelerator names, for `vlax plan` (no TPU needed).

One table; every number says where it comes from. Bandwidths are bytes/s, HBM bytes.
Sources (Google Cloud TPU system-architecture pages, read 2026-11-30):
  v4:  cloud.google.com/tpu/docs/v4   - 275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s.
       ICI is not in that table: 6 links per chip (3-D torus) at ~45 GB/s per link and
       direction ("How to Scale Your Model", jax-ml.github.io/scaling-book, TPU chapter)
       -> 6 * 45 GB/s * 2 = 540 GB/s bidirectional per chip (derived, the one number
       here that is not on a Cloud page).
  v5e: cloud.google.com/tpu/docs/v5e  - 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s,
       400 GB/s bidirectional ICI per chip.
  v5p: cloud.google.com/tpu/docs/v5p  - 459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s,
       1200 GB/s bidirectional ICI per chip.
  v6e: cloud.google.com/tpu/docs/v6e  - 918 TFLOP/s bf16, 32 GB HBM at 1638 GB/s,
       800 GB/s bidirectional ICI per chip.
Cloud accelerator names: v4 and v5p count TensorCores (two per chip: v5p-128 is 64
chips), v5e and v6e count chips.
"""

from __future__ import annotations

import dataclasses
import math
import re

from vlax.errors import VlaxError

GB = 1e9
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str  # the generation as libtpu's topology names spell it ("v5p")
  bf16_flops: float  # peak bf16 FLOP/s per chip
  hbm_bytes: float  # HBM capacity per chip
  hbm_bandwidth: float  # bytes/s per chip
  ici_bandwidth: float  # bidirectional inter-chip interconnect, bytes/s per chip
  cores_per_chip: int  # what a Cloud accelerator name counts per chip
  source: str

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 275e12, 32 * GIB, 1200 * GB, 540 * GB, 2,
               "cloud.google.com/tpu/docs/v4; ICI derived from jax-ml scaling-book"),
    "v5e": Chip("v5e", 197e12, 16 * GB, 819 * GB, 400 * GB, 1,
                "cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 459e12, 95 * GIB, 2765 * GB, 1200 * GB, 2,
                "cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 918e12, 32 * GB, 1638 * GB, 800 * GB, 1,
                "cloud.google.com/tpu/docs/v6e"),
}

# Cloud accelerator name -> libtpu topology (chips laid out as the Cloud docs list them).
ACCELERATORS: dict[str, str] = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4",
    "v4-128": "v4:4x4x4", "v4-256": "v4:4x4x8", "v4-512": "v4:4x8x8",
    "v4-1024": "v4:8x8x8",
    "v5e-1": "v5e:1x1", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4",
    "v5e-32": "v5e:4x8", "v5e-64": "v5e:8x8", "v5e-128": "v5e:8x16",
    "v5e-256": "v5e:16x16",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4",
    "v5p-64": "v5p:2x4x4", "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8",
    "v5p-512": "v5p:4x8x8", "v5p-1024": "v5p:8x8x8",
    "v6e-1": "v6e:1x1", "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4",
    "v6e-32": "v6e:4x8", "v6e-64": "v6e:8x8", "v6e-128": "v6e:8x16",
    "v6e-256": "v6e:16x16",
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # as given
  topology: str  # libtpu's "v5p:4x4x4"
  chip: Chip
  chips: int


def known_names() -> str:
  return (", ".join(ACCELERATORS) + "; or GEN:AxB[xC] with GEN in "
          + "/".join(CHIPS) + " (e.g. v5p:4x4x4)")


def resolve(name: str) -> Topology:
  """A Cloud accelerator name (`v5p-128`) or a topology (`v5p:4x4x4`) -> Topology."""
  key = name.strip().lower()
  topo = ACCELERATORS.get(key, key)
  m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", topo)
  if m is None:
    raise VlaxError(f"unknown TPU topology {name!r}; known: {known_names()}")
  dims = [int(d) for d in m.group(2).split("x")]
  chip = CHIPS[m.group(1)]
  want = 3 if chip.name in ("v4", "v5p") else 2
  if len(dims) != want or min(dims) < 1:
    raise VlaxError(f"TPU topology {name!r}: {chip.name} needs {want} dimensions "
                    f"(e.g. {'v5p:4x4x4' if want == 3 else 'v5e:16x16'})")
  return Topology(name, topo, chip, math.prod(dims))
