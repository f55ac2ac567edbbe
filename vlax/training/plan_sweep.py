"""`vlax plan --sweep`: compile several meshes (and batch sizes / remat policies) for one
TPU topology and rank them, so the plan chooses the mesh instead of a person.

Candidates (kept modest: every one is a full TPU compile, minutes for a 3B model):
`data` in `data_sizes` (default 1, 2, 4, 8, 16) x `tensor` in `tensor_sizes` (default
1, 2, 4), `fsdp` = the rest of the chips, kept when `fsdp` is a power of two, the global
batch splits over `data x fsdp` (and the gradient-accumulation steps), `tensor` divides
the head counts of both towers (otherwise their attention would be replicated), and
jax can lay the mesh onto the slice's torus (each axis made of whole physical
dimensions: on v5p:4x4x4 that leaves 1x64x1, 4x16x1, 16x4x1, 1x16x4, 4x4x4, 16x1x4).
The others are listed under `sweep.skipped` with the reason. `meshes` replaces the list
with explicit `DxFxT` shapes.

Ranking, among candidates that fit: the estimated step time per example (the roofline
lower bound, `step_time_estimate_s` / global batch) rounded to 3 significant digits, then
the no-overlap bound (`step_time_no_overlap_s`, which carries the ICI time), then the ICI
traffic per chip. A compute-bound step has the same lower bound on every mesh (the plan's
MFU is then the remat ceiling and cannot rank), so the collectives decide; candidates
that do not fit come last.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any, Mapping, Sequence

from vlax.config import load_config
from vlax.errors import VlaxError
from vlax.training import config as config_lib
from vlax.training import plan as plan_lib
from vlax.training import setup as setup_lib
from vlax.training import tpu_chips

DATA_SIZES = (1, 2, 4, 8, 16)
TENSOR_SIZES = (1, 2, 4)
RANKING = ("fits first; then step time per example (max of compute, HBM and ICI bounds, "
           "3 significant digits); then the no-overlap step time per example; then ICI "
           "traffic per chip per example")


def parse_sizes(text: str | None, what: str) -> tuple[int, ...] | None:
  """'1,2,4' -> (1, 2, 4); None stays None."""
  if text is None:
    return None
  try:
    sizes = tuple(int(x) for x in str(text).split(",") if x.strip())
  except ValueError:
    raise VlaxError(f"{what}: expected comma-separated integers, got {text!r}") from None
  if not sizes or min(sizes) < 1:
    raise VlaxError(f"{what}: expected positive integers, got {text!r}")
  return sizes


def parse_meshes(text: str | None) -> list[dict[str, int]] | None:
  """'4x16x1,1x64x1' -> [{'data': 4, 'fsdp': 16, 'tensor': 1}, ...]."""
  if text is None:
    return None
  out = []
  for item in (x.strip() for x in text.split(",") if x.strip()):
    parts = item.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
      raise VlaxError(f"--meshes: expected DATAxFSDPxTENSOR (e.g. 4x16x1), got {item!r}")
    out.append(dict(zip(("data", "fsdp", "tensor"), (int(p) for p in parts))))
  if not out:
    raise VlaxError("--meshes: no mesh given")
  return out


def candidate_meshes(chips: int, global_batch: int, grad_accum: int, model_config,
                     data_sizes: Sequence[int] = DATA_SIZES,
                     tensor_sizes: Sequence[int] = TENSOR_SIZES) -> list[dict[str, int]]:
  """The meshes worth compiling for `chips` chips (see the module docstring)."""
  out = []
  for tensor in tensor_sizes:
    if tensor > 1 and (model_config.llm.num_heads % tensor
                       or model_config.vision.num_heads % tensor):
      continue
    for data in data_sizes:
      if chips % (data * tensor):
        continue
      fsdp = chips // (data * tensor)
      if fsdp & (fsdp - 1) or global_batch % (data * fsdp * grad_accum):
        continue
      out.append({"data": data, "fsdp": fsdp, "tensor": tensor})
  return out


def _with_remat(config, policy: str):
  """`policy`: a flax remat policy name, or 'none' (no remat)."""
  c = copy.deepcopy(config)
  if policy.lower() in ("none", "off", "false"):
    c.model.remat = False
    return c
  c.model.remat = True
  o = c.model.overrides
  if o is None or o == "":
    c.model.overrides = f"remat_policy={policy}"
  elif isinstance(o, str):
    c.model.overrides = f"{o},remat_policy={policy}"  # later keys win
  else:
    o = dict(o)
    o["remat_policy"] = policy
    c.model.overrides = o
  return c


def _placeable(jobs: list, topo: tpu_chips.Topology) -> tuple[list, list[dict]]:
  """Drops the meshes jax cannot lay onto the slice (no compile needed to know)."""
  keep, skipped, seen = [], [], {}
  for job in jobs:
    label = _label(job[0])
    if label not in seen:
      try:
        plan_lib.topology_mesh(job[0], topo)
        seen[label] = None
      except VlaxError as e:
        seen[label] = str(e)
        skipped.append({"mesh": label, "reason": str(e)})
    if seen[label] is None:
      keep.append(job)
  return keep, skipped


def rank_key(entry: Mapping[str, Any]) -> tuple:
  """Sort key: smaller is better (see RANKING)."""
  step = entry.get("step_time_estimate_s")
  if not entry.get("fits") or not step:
    return (1, math.inf, math.inf, math.inf)
  batch = entry["global_batch"]
  return (0, float(f"{step / batch:.3g}"), entry["step_time_no_overlap_s"] / batch,
          entry["ici_traffic_bytes_per_chip"] / batch)


def _label(mesh: Mapping[str, int]) -> str:
  return f"{mesh['data']}x{mesh['fsdp']}x{mesh['tensor']}"


def sweep(config: Any, topology: str, meshes: Sequence[Mapping[str, int]] | None = None,
          data_sizes: Sequence[int] | None = None, tensor_sizes: Sequence[int] | None = None,
          batch_sizes: Sequence[int] | None = None,
          remat_policies: Sequence[str] | None = None,
          hbm_capacity_bytes: int | None = None, log=sys.stderr) -> dict[str, Any]:
  """Plans every candidate (mesh x batch size x remat policy) and ranks them.

  Returns {topology, accelerator, chips, sweep: {...what was swept, ranking}, candidates:
  [plan + rank, best first], chosen: the best candidate that fits (None if none does)}.
  A candidate whose compile fails for another reason than HBM is kept with its `error`.
  """
  config = config_lib.with_defaults(config)
  topo = tpu_chips.resolve(topology)
  batches = list(batch_sizes or [int(config.batch_size)])
  remats = list(remat_policies or [None])
  accum = int(config.optimizer.grad_accum_steps)
  jobs = []
  for remat in remats:
    base = config if remat is None else _with_remat(config, remat)
    model_config = setup_lib.build_model_config(base)
    for batch in batches:
      found = (list(meshes) if meshes is not None else candidate_meshes(
          topo.chips, batch, accum, model_config, data_sizes or DATA_SIZES,
          tensor_sizes or TENSOR_SIZES))
      for mesh in found:
        if math.prod(mesh.values()) != topo.chips:
          raise VlaxError(f"mesh {_label(mesh)} has {math.prod(mesh.values())} devices; "
                          f"{topology} has {topo.chips} chips")
        jobs.append((mesh, batch, remat, base))
  jobs, skipped = _placeable(jobs, topo)
  if not jobs:
    raise VlaxError(f"no candidate mesh for {topo.chips} chips at batch {batches} (the "
                    "batch must split over data x fsdp, the axes must fit the torus; "
                    f"skipped: {skipped}; try --sweep-data / --meshes)")

  entries = []
  for i, (mesh, batch, remat, base) in enumerate(jobs, 1):
    c = copy.deepcopy(base)
    c.batch_size = batch
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh["data"], mesh["fsdp"], mesh["tensor"]
    what = f"mesh {_label(mesh)}, batch {batch}" + (f", remat {remat}" if remat else "")
    print(f"[{i}/{len(jobs)}] {what}: compiling", file=log, flush=True)
    try:
      entry = plan_lib.plan(c, topology, hbm_capacity_bytes=hbm_capacity_bytes)
    except Exception as e:  # pylint: disable=broad-except
      # One mesh the compiler rejects must not lose the others' minutes of compiling.
      entry = {"mesh": dict(mesh), "global_batch": batch, "fits": False,
               "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    model = entry.get("model")
    entry["remat_policy"] = remat or (None if model is None else (
        model["remat_policy"] if model["remat"] else "none"))
    entries.append(entry)
    print(f"[{i}/{len(jobs)}] {what}: {_row_words(entry)}", file=log, flush=True)

  entries.sort(key=rank_key)
  for rank, entry in enumerate(entries, 1):
    entry["rank"] = rank
  chosen = entries[0] if entries[0].get("fits") and entries[0].get(
      "step_time_estimate_s") else None
  return {
      "topology": topo.topology, "accelerator": topology, "chips": topo.chips,
      "sweep": {"meshes": list(dict.fromkeys(_label(j[0]) for j in jobs)),
                "skipped": skipped,
                "batch_sizes": batches, "remat_policies": remats, "ranking": RANKING},
      "candidates": entries,
      "chosen": chosen,
  }


def _row_words(e: Mapping[str, Any]) -> str:
  if e.get("error"):
    return f"error ({e['error'][:120]})"
  hbm = e["hbm_per_chip_bytes"]["total"] / 2**30
  if not e.get("step_time_estimate_s"):
    return f"does not fit ({hbm:.3g} GiB per chip)"
  return (f"{'fits' if e['fits'] else 'does not fit'}, {hbm:.3g} GiB per chip, step >= "
          f"{e['step_time_estimate_s']:.3g} s, ICI {e['ici_traffic_bytes_per_chip'] / 1e9:.3g}"
          f" GB per chip, compiled in {e['compile_s']} s")


def table(result: Mapping[str, Any]) -> str:
  """The ranked candidates as a Markdown table, and which was chosen."""
  head = ("| rank | mesh d x f x t | batch | remat | fits | HBM/chip GiB | all-gather | "
          "reduce-scatter | all-reduce | ICI GB/chip | step s: compute / ICI / bound | "
          "no overlap s | MFU est. |")
  lines = [f"vlax plan --sweep: {result['accelerator']} ({result['topology']}, "
           f"{result['chips']} chips), ranked: {RANKING}", "", head,
           "|" + "---|" * head.count(" | ") + "---|"]
  for e in result["candidates"]:
    mesh = _label(e["mesh"])
    if e.get("error"):
      lines.append(f"| {e['rank']} | {mesh} | {e['global_batch']} | {e.get('remat_policy')} "
                   f"| error: {e['error'][:80]} |" + " |" * 8)
      continue
    hbm = e["hbm_per_chip_bytes"]["total"] / 2**30
    remat = e["remat_policy"] if e["model"]["remat"] else "none"
    if not e.get("step_time_estimate_s"):
      lines.append(f"| {e['rank']} | {mesh} | {e['global_batch']} | {remat} | no | "
                   f"{hbm:.3g} |" + " - |" * 7)
      continue
    c, b = e["collectives"], e["step_time_bounds_s"]
    lines.append(
        f"| {e['rank']} | {mesh} | {e['global_batch']} | {remat} | "
        f"{'yes' if e['fits'] else 'no'} | {hbm:.3g} | {c['all-gather']['count']} | "
        f"{c['reduce-scatter']['count']} | {c['all-reduce']['count']} | "
        f"{e['ici_traffic_bytes_per_chip'] / 1e9:.3g} | {b['compute']:.3g} / {b['ici']:.3g}"
        f" / {e['step_time_estimate_s']:.3g} ({e['bound']}) | "
        f"{e['step_time_no_overlap_s']:.3g} | {e['mfu_estimate']} |")
  chosen = result.get("chosen")
  lines.append("")
  skipped = result.get("sweep", {}).get("skipped") or []
  if skipped:
    lines.append("not compiled (jax cannot lay these axes onto the torus): "
                 + ", ".join(s["mesh"] for s in skipped))
  if chosen is None:
    lines.append("chosen: none fits; see each candidate's `suggestion` in the JSON")
  else:
    m = chosen["mesh"]
    flags = (f"chosen: --config.mesh.data={m['data']} --config.mesh.fsdp={m['fsdp']} "
             f"--config.mesh.tensor={m['tensor']} --config.batch_size={chosen['global_batch']}")
    if any(result.get("sweep", {}).get("remat_policies") or ()):  # remat was swept
      flags += (f" --config.model.remat=True --config.model.overrides=remat_policy="
                f"{chosen['remat_policy']}" if chosen["model"]["remat"]
                else " --config.model.remat=False")
    lines.append(flags)
  return "\n".join(lines)


def main_sweep(config_path: str | None, topology: str, overrides, out: str | None,
               **options) -> dict:
  """`vlax plan --sweep`: JSON on stdout (and to `out`), the ranked table on stderr."""
  tpu_chips.resolve(topology)  # a bad name fails before anything heavy
  config = load_config(config_path, overrides)
  result = sweep(config, topology, **options)
  plan_lib.emit(result, out, table(result))
  return result
