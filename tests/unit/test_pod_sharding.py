"""Simulated TPU pod for the input pipeline: 64 and 256 hosts over an OXE-like mixture.

No jax.distributed and no data: `rlds.host_episode_ranges` is the function every host
calls to pick its episodes, so calling it for every host index checks the whole pod.
The mixture has datasets with many files (1024 files, 87k episodes), medium ones, and
ones with fewer files and even fewer episodes than hosts, each read as the 95 % train
slice and the 5 % validation slice (the case that broke two-process training).

Numbers (asserted below): every episode of a split with E >= H episodes is read by
exactly one host and host sizes differ by at most one episode (e.g. bridge-like
"train[95%:]", 4,361 episodes on 256 hosts: 17 or 18 each, 1-2 of its 52 files per
host); a split with E < H episodes gives each host one episode, each episode on
floor(H/E) or ceil(H/E) hosts.
"""

import collections

import pytest

from vlax.data import rlds

# name: (episodes, files) - sizes in the range of real OXE datasets.
MIXTURE = {
    "bridge_like": (87_212, 1024),
    "fractal_like": (73_499, 1024),
    "kuka_like": (209_880, 1024),
    "taco_like": (3_242, 64),
    "toto_like": (902, 32),
    "cable_like": (1_482, 16),
    "utokyo_like": (104, 4),  # fewer files than hosts; val slice: 5 episodes
    "tiny_like": (40, 1),  # fewer episodes than 64 hosts
}
SPLITS = ("train[:95%]", "train[95%:]", "train")


def _file_bounds(episodes: int, files: int) -> list[int]:
  """Episode index where each file starts (TFDS shards are near-equal in count)."""
  return [i * episodes // files for i in range(files + 1)]


def _files_touched(ranges, bounds) -> int:
  n = 0
  for _, a, b in ranges:
    n += sum(1 for f in range(len(bounds) - 1) if bounds[f] < b and bounds[f + 1] > a)
  return n


@pytest.mark.parametrize("hosts", [64, 256])
def test_pod_hosts_partition_every_split(hosts):
  for name, (episodes, files) in MIXTURE.items():
    bounds = _file_bounds(episodes, files)
    for split in SPLITS:
      per_host = [rlds.host_episode_ranges(split, {"train": episodes}, h, hosts, name)
                  for h in range(hosts)]
      owners = collections.Counter()
      sizes = []
      for ranges in per_host:
        eps = [e for base, a, b in ranges for e in range(a, b)]
        assert all(base == "train" for base, _, _ in ranges)
        sizes.append(len(eps))
        owners.update(eps)
      whole = rlds.host_episode_ranges(split, {"train": episodes}, 0, 1, name)
      assert len(whole) == 1
      _, lo, hi = whole[0]
      total = hi - lo
      assert set(owners) == set(range(lo, hi)), (name, split)  # covers the split, no more
      if total >= hosts:
        assert all(c == 1 for c in owners.values()), (name, split)  # disjoint
        assert sum(sizes) == total
        assert max(sizes) - min(sizes) <= 1, (name, split, min(sizes), max(sizes))
        # Files a host opens: at most its share of the slice's files plus two boundaries.
        slice_files = _files_touched(whole, bounds)
        touched = [_files_touched(r, bounds) for r in per_host]
        assert max(touched) <= -(-slice_files // hosts) + 2, (name, split, max(touched))
      else:
        assert sizes == [1] * hosts, (name, split)
        assert min(owners.values()) == hosts // total, (name, split)
        assert max(owners.values()) == -(-hosts // total), (name, split)


def test_stated_numbers():
  """The numbers in the module docstring."""
  hosts, (episodes, files) = 256, MIXTURE["bridge_like"]
  per_host = [rlds.host_episode_ranges("train[95%:]", {"train": episodes}, h, hosts)
              for h in range(hosts)]
  sizes = [b - a for r in per_host for _, a, b in r]
  assert (sum(sizes), min(sizes), max(sizes)) == (4361, 17, 18)
  bounds = _file_bounds(episodes, files)
  whole = rlds.host_episode_ranges("train[95%:]", {"train": episodes}, 0, 1)
  assert _files_touched(whole, bounds) == 52
  touched = [_files_touched(r, bounds) for r in per_host]
  assert (min(touched), max(touched)) == (1, 2)
  # utokyo_like validation slice: 5 episodes for 64 hosts -> each on 12 or 13 hosts.
  per_host = [rlds.host_episode_ranges("train[95%:]", {"train": 104}, h, 64)
              for h in range(64)]
  owners = collections.Counter(a for r in per_host for _, a, _ in r)
  assert len(owners) == 5 and sorted(set(owners.values())) == [12, 13]
