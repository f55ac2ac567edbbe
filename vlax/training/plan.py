"""`vlax plan`: compile the real train step for a TPU topology on a CPU-only host.

The idea of MaxText's train_compile, written for vlax: libtpu describes a TPU slice
(`jax.experimental.topologies.get_topology_desc`) without any TPU attached; vlax builds
the same `ModelSetup` as `vlax train` (model, optimizer, logical-rule shardings, the
jitted donated train step) on a mesh of those abstract chips, lowers it with
ShapeDtypeStructs that carry the shardings (no weights, no data), and compiles it with
the TPU compiler. From the executable:
  * HBM per chip (`memory_analysis`: arguments, outputs, temps; donated outputs alias the
    arguments) against the chip's capacity -> `fits`. The TPU compiler refuses a program
    that does not fit; its report ("Used X of Y hbm", the largest allocations) is parsed.
  * collectives parsed from the compiled HLO: count and bytes per kind, multiplied by
    the trip count of the (scanned) loops they sit in.
  * a step-time estimate: the largest of compute (analytic FLOPs, as in benchmarks/, plus
    the forward recompute of remat, at the chip's bf16 peak), HBM traffic (XLA's
    bytes accessed, scaled like its FLOPs for the loop bodies it counts once) and
    collective traffic (ring algorithm) at the chip's ICI bandwidth. Overlap is assumed
    perfect, so this is a lower bound on the step time (an upper bound on MFU);
    `step_time_no_overlap_s` adds the ICI time instead (no overlap: the other bound).
`vlax plan --sweep` (vlax.training.plan_sweep) compiles several meshes and ranks them.
`VLAX_PLAN_DUMP_HLO=PATH` also writes the compiled HLO text there (to read it by hand).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import topologies
from jax.sharding import NamedSharding

from vlax.actions import default_action_vocab
from vlax.config import load_config
from vlax.data import cotrain
from vlax.data.text_tokenizer import TextTokenizer, load_toy_tokenizer
from vlax.errors import VlaxError
from vlax.models import presets
from vlax.models.batch import Batch
from vlax.training import config as config_lib
from vlax.training import mesh as mesh_lib
from vlax.training import optimizer as optimizer_lib
from vlax.training import setup as setup_lib
from vlax.training import tpu_chips

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
               "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
               "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}


# ---------------------------------------------------------------------------------------
# Abstract inputs.


def plan_vocab_size(config: Any) -> tuple[int | None, str]:
  """The LLM vocabulary `vlax train` would use (its data sets it), without the data.

  Toy tokenizer: computed exactly like the data pipeline. A SentencePiece path that
  exists: read it. Otherwise (e.g. pretrain_oxe's Gemma tokenizer left empty): the
  model preset's own vocabulary (PaliGemma's 257,152, which the action bins fit into).
  """
  d = cotrain.resolve_data_config(config)
  path = str(d.text_tokenizer or "")
  if path == "toy":
    text_size, where = load_toy_tokenizer().vocab_size, "toy text tokenizer"
  elif path and os.path.exists(path):
    text_size, where = TextTokenizer(path).vocab_size, path
  else:
    return None, "model preset (no text tokenizer given)"
  if int(d.action_vocab_start) >= 0:
    return None, "model preset (action_vocab_start set)"
  n = int(d.fast_vocab_size) if d.action_tokenizer == "fast" else int(d.num_bins)
  return max(text_size, default_action_vocab(text_size, n).end), where


def plan_action_tokenizer(config: Any) -> dict[str, Any]:
  """Action tokenizer metadata as the data would give it (what label smoothing reads):
  its type and bins at the end of the vocabulary (the place does not change the plan)."""
  d = cotrain.resolve_data_config(config)
  kind = "fast" if d.action_tokenizer == "fast" else "bins"
  nb = int(d.num_bins)
  return {"type": kind, "num_bins": nb, "vocab": {"start": 0, "size": nb}}


def example_batch(config: Any, model_config) -> Batch:
  """A batch of one with the fields, shapes and dtypes the cotrain pipeline yields."""
  d = cotrain.resolve_data_config(config)
  cams, size, length = len(tuple(d.cameras)), int(d.image_size), int(d.max_len)
  if int(d.history) > 1:
    cams *= int(d.history)
  del model_config
  return Batch.zeros(1, cams, size, length)


def num_datasets(config: Any) -> int:
  d = cotrain.resolve_data_config(config)
  robot = cotrain.robot_entries(d.robot_datasets)
  return max(1, len(robot) + len(tuple(d.web_sources or ())))


def accelerator_type(topo: tpu_chips.Topology) -> str:
  """The Cloud accelerator type libtpu expects in TPU_ACCELERATOR_TYPE (`v5litepod-4`)."""
  prefix = "v5litepod" if topo.chip.name == "v5e" else topo.chip.name
  return f"{prefix}-{topo.chips * topo.chip.cores_per_chip}"


def quiet_libtpu(topo: tpu_chips.Topology) -> None:
  """Tells libtpu the host facts it looks up at load time, so it logs nothing.

  Off a TPU VM, jax sets TPU_SKIP_MDS_QUERY and libtpu, finding no worker hostnames nor
  accelerator type, prints "Failed to find host bounds ..." and an E0000 INVALID_ARGUMENT
  about TPU_WORKER_HOSTNAMES (harmless for a compile-only topology, alarming for a user).
  One local worker and the slice's own type silence both (libtpu's log-level variables
  do not: they apply after that code runs); the topology's devices are unchanged. Later,
  a 3B compile trips libtpu's "Very slow compile?" alarm (an E-level log line): stderr
  logging is raised to FATAL, since the compiler's real errors (out of HBM) reach Python
  as exceptions. Values already in the environment win (TPU_STDERR_LOG_LEVEL=0 shows
  everything). Must run before libtpu loads.
  """
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(topo))
  os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")


def topology_devices(topo: tpu_chips.Topology) -> list:
  """libtpu's abstract devices of the slice (one per chip: megacore on v4/v5p)."""
  kwargs = {"chip_config_name": "megacore"} if topo.chip.cores_per_chip == 2 else {}
  # No TPU is opened here: let several plans (or a plan beside a TPU job) load libtpu.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  quiet_libtpu(topo)
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.topology,
                                        **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise VlaxError(f"libtpu cannot describe TPU topology {topo.topology!r} "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); is libtpu "
                    "installed (pip install 'jax[tpu]')?") from None
  devices = list(desc.devices)
  if len(devices) != topo.chips:
    raise VlaxError(f"TPU topology {topo.topology!r}: libtpu gave {len(devices)} devices, "
                    f"expected {topo.chips} chips")
  return devices


# ---------------------------------------------------------------------------------------
# Reading the compiled program.


def _shape_bytes(text: str) -> list[float]:
  """Bytes of every array type (`bf16[16,2048]{...}`) in an HLO type string."""
  out = []
  for dtype, dims in re.findall(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]", text):
    if dtype in DTYPE_BYTES:
      n = math.prod(int(x) for x in dims.split(",") if x) if dims else 1
      out.append(n * DTYPE_BYTES[dtype])
  return out


def _group_size(line: str) -> int:
  """Devices per replica group: `mesh['axis_0'=4,'axis_1'=2] {'axis_0'}`, `[16,4]<=[64]`
  or `{{0,1,2,3},...}`."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]", line)
  if m:  # the axes in braces may follow a `device_ids=(...)` permutation
    sizes = dict((k, int(v)) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1)))
    axes = re.search(r"\{('[^}]*)\}", line[m.end():])
    if axes:
      return math.prod(sizes.get(a, 1) for a in re.findall(r"'([^']+)'", axes.group(1)))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
  if m:
    return len([x for x in m.group(1).split(",") if x])
  m = re.search(r"source_target_pairs=\{", line)
  return 2 if m else 1


_COMP_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$")


def _computations(hlo: str) -> tuple[dict[str, list[str]], str | None]:
  comps, entry, cur = {}, None, None
  for line in hlo.splitlines():
    m = _COMP_HEADER.match(line.strip()) if not line.startswith("  ") else None
    if m:
      cur = m.group(2)
      comps[cur] = []
      if m.group(1):
        entry = cur
      continue
    if cur is not None:
      if line.strip() == "}":
        cur = None
      else:
        comps[cur].append(line)
  return comps, entry


def _trip_count(line: str, comps: Mapping[str, list[str]]) -> int:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
  if m:
    return int(m.group(1))
  m = re.search(r"condition=%?([\w.\-]+)", line)
  if m and m.group(1) in comps:
    consts = [int(c) for l in comps[m.group(1)]
              for c in re.findall(r"s32\[\](?:\{[^}]*\})? constant\((\d+)\)", l)]
    if consts:
      return max(consts)
  return 1


def collectives(hlo: str) -> dict[str, dict[str, float]]:
  """{kind: {count, bytes, traffic_bytes}} per step and chip from compiled HLO text.

  count: executions per step (a collective inside a scanned loop counts trip-count
  times). bytes: the full array moved (all-gather output, reduce-scatter input,
  all-reduce operand). traffic_bytes: what a chip sends with a ring algorithm:
  (n-1)/n x bytes for gathers/scatters/all-to-all, 2(n-1)/n x for all-reduce.
  """
  comps, entry = _computations(hlo)
  out = {k: {"count": 0, "bytes": 0.0, "traffic_bytes": 0.0} for k in COLLECTIVES}
  if entry is None:
    return out
  seen_depth = [0]

  def visit(name: str, mult: int):
    seen_depth[0] += 1
    if seen_depth[0] > 100_000:
      return
    # The TPU compiler writes a reduce-scatter as a fusion `%all-reduce-scatter.N` of an
    # all-reduce and a dynamic-slice, run as one reduce-scatter.
    scatter = name.startswith("all-reduce-scatter")
    for line in comps.get(name, ()):
      m = _INSTR.match(line)
      if not m:
        continue
      op = m.group(3)
      base = op[:-len("-start")] if op.endswith("-start") else op
      if scatter and base == "all-reduce":
        base, op = "reduce-scatter", "reduce-scatter-start"  # sizes: the full arrays
      if base in COLLECTIVES:
        sizes = _shape_bytes(m.group(2))  # the result type (a tuple when combined)
        n = max(_group_size(line), 1)
        if op == "reduce-scatter-start":  # the all-reduce of an all-reduce-scatter
          full = sum(sizes)
        elif op.endswith("-start"):  # (operand, result) pairs: the larger is the full array
          full = max(sizes) if sizes else 0.0
        else:
          full = sum(sizes) * (n if base == "reduce-scatter" else 1)
        factor = 2 * (n - 1) / n if base == "all-reduce" else (
            1.0 if base == "collective-permute" else (n - 1) / n)
        out[base]["count"] += mult
        out[base]["bytes"] += mult * full
        out[base]["traffic_bytes"] += mult * full * factor
      trips = _trip_count(line, comps) if op == "while" else 1
      for attr, callee in re.findall(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)", line):
        if attr == "to_apply":
          continue  # reducers: no collectives inside
        visit(callee, mult * (trips if attr == "body" else 1))
      for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
        for callee in re.findall(r"%?([\w.\-]+)", group):
          visit(callee, mult)

  visit(entry, 1)
  return out


def _largest_hlo_values(hlo: str, top: int = 5) -> list[dict[str, Any]]:
  """The biggest arrays the program makes, named by their op (and jax source op)."""
  rows = []
  for line in hlo.splitlines():
    m = _INSTR.match(line)
    if not m or m.group(3) in ("parameter", "get-tuple-element", "tuple", "bitcast"):
      continue
    sizes = _shape_bytes(m.group(2))
    if not sizes:
      continue
    src = re.search(r'op_name="([^"]+)"', line)
    rows.append({"name": (src.group(1) if src else m.group(1))[-120:],
                 "op": m.group(3), "bytes": int(max(sizes))})
  rows.sort(key=lambda r: -r["bytes"])
  out, names = [], set()
  for r in rows:
    if r["name"] not in names:
      names.add(r["name"])
      out.append(r)
    if len(out) == top:
      break
  return out


def _largest_state_buffers(setup, top: int = 5) -> list[dict[str, Any]]:
  """Per-chip bytes of the biggest params / optimizer-state leaves, by path."""
  rows = []
  flat = jax.tree_util.tree_flatten_with_path(setup.abstract_state)[0]
  shards = jax.tree.leaves(setup.state_sharding,
                           is_leaf=lambda s: isinstance(s, NamedSharding))
  for (path, leaf), sh in zip(flat, shards):
    local = sh.shard_shape(tuple(leaf.shape))
    nbytes = math.prod(local) * np.dtype(leaf.dtype).itemsize
    rows.append({"name": optimizer_lib.path_str(path), "shape": list(leaf.shape),
                 "spec": str(sh.spec), "bytes": int(nbytes)})
  rows.sort(key=lambda r: -r["bytes"])
  return rows[:top]


def _replicated_state(setup) -> dict[str, Any]:
  """Params / optimizer state left whole on every chip (no mesh axis divides their dims)."""
  flat = jax.tree_util.tree_flatten_with_path(setup.abstract_params)[0]
  shards = jax.tree.leaves(setup.params_sharding,
                           is_leaf=lambda s: isinstance(s, NamedSharding))
  total, names = 0, []
  for (path, leaf), sh in zip(flat, shards):
    if setup.mesh.size > 1 and sh.shard_shape(tuple(leaf.shape)) == tuple(leaf.shape):
      n = math.prod(leaf.shape)
      total += n
      if n >= 1_000_000:
        names.append(optimizer_lib.path_str(path))
  # f32 params + two Adam-sized moments (an estimate for other optimizers).
  return {"params": int(total), "bytes_per_chip_estimate": int(total * 12),
          "largest": names[:8]}


_SCALE = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = r"([0-9.]+)([KMGT]?)i?B?"


def _bytes(num: str, unit: str) -> int:
  return int(float(num) * _SCALE[unit])


def _parse_oom(msg: str) -> dict[str, Any] | None:
  """The TPU compiler's out-of-HBM refusal -> {used or temps, available, allocations}.

  Two wordings are known: "Used 20.5G of 15.75G hbm ..." (with the largest allocations
  listed) and "... memory required for HLO temporaries (745.68G) exceeds available HBM
  (15.75G)".
  """
  if "RESOURCE_EXHAUSTED" not in msg and "Ran out of memory" not in msg:
    return None
  out: dict[str, Any] = {"message": " ".join(msg.split())[:600]}
  m = re.search(rf"Used {_SIZE} of {_SIZE} hbm", msg)
  if m:
    out["used"] = _bytes(m.group(1), m.group(2))
    out["available"] = _bytes(m.group(3), m.group(4))
  m = re.search(rf"HLO temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)", msg)
  if m:
    out["temps"] = _bytes(m.group(1), m.group(2))
    out["available"] = _bytes(m.group(3), m.group(4))
  out["allocations"] = [
      {"name": what.strip()[:120], "bytes": _bytes(num, unit)}
      for num, unit, what in re.findall(
          rf"Size: {_SIZE}\n(?:.*\n){{0,3}}?\s*(?:Operator|XLA Label): ([^\n]+)", msg)][:5]
  return out


# ---------------------------------------------------------------------------------------
# The plan.


@dataclasses.dataclass
class _Compiled:
  compiled: Any = None
  oom: dict[str, Any] | None = None
  seconds: float = 0.0


def _compile(setup, example: Batch, batch_size: int) -> _Compiled:
  mesh = setup.mesh
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       setup.abstract_state, setup.state_sharding)
  bsh = mesh_lib.batch_sharding(mesh)
  batch = jax.tree.map(
      lambda v: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype, sharding=bsh),
      example)
  t = time.time()
  with setup.context():
    lowered = setup.train_step.lower(state, batch)
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    oom = _parse_oom(str(e))
    if oom is None:
      raise
    return _Compiled(oom=oom, seconds=time.time() - t)
  return _Compiled(compiled=compiled, seconds=time.time() - t)


def _suggestion(config, mesh_shape, per_chip_batch, largest_batch, args, temps,
                capacity) -> str:
  tips = []
  if largest_batch is not None and largest_batch < per_chip_batch:
    tips.append(f"a smaller per-chip batch (about {max(largest_batch, 0)} fits: "
                f"batch_size={max(largest_batch, 1) * mesh_shape['data'] * mesh_shape['fsdp']}"
                " or optimizer.grad_accum_steps)")
  if temps > args and not bool(config.model.remat):
    tips.append("model.remat=True (recompute activations in the backward pass)")
  if args > 0.3 * capacity:
    if mesh_shape["fsdp"] < math.prod(mesh_shape.values()):
      tips.append("more FSDP (mesh.data=1, mesh.fsdp=-1)")
    tips.append("tensor parallelism (mesh.tensor=2 or 4)")
    if config.optimizer.name == "adamw":
      tips.append("optimizer.name=adafactor (factored second moments)")
  return "; ".join(tips) or "a larger topology"


def topology_mesh(mesh_config: Mapping[str, Any], topo: tpu_chips.Topology):
  """The training mesh on the slice's chips, or a one-line error when jax cannot lay the
  axes onto the physical torus (each axis must be made of whole physical dimensions:
  on v5p:4x4x4, fsdp=16 is one 4x4 plane, fsdp=32 would split one)."""
  devices = topology_devices(topo)
  try:
    return mesh_lib.mesh_from_config(mesh_config, devices=devices)
  except VlaxError:
    raise  # a bad size (-1 twice, not dividing the chips) says so itself
  except (NotImplementedError, ValueError, AssertionError) as e:
    shape = {k: mesh_config.get(k) for k in mesh_lib.AXES}
    raise VlaxError(f"mesh {shape} cannot be laid out on {topo.topology}'s chips "
                    f"(jax.make_mesh: {str(e).splitlines()[0][:160]}); use axis sizes "
                    "that are products of the topology's dimensions") from None


_BUILT: dict[tuple[str, str], tuple] = {}  # one compile per (config, topology) per process


def _build(config: Any, topo: tpu_chips.Topology) -> tuple:
  config = config_lib.with_defaults(config)
  key = (config_lib.config_to_dict(config).__repr__(), topo.topology)
  if key in _BUILT:
    return _BUILT[key]
  mesh = topology_mesh(config.mesh, topo)
  batch_size = int(config.batch_size)
  mesh_lib.check_batch_size(batch_size, mesh, int(config.optimizer.grad_accum_steps))
  vocab, vocab_source = plan_vocab_size(config)
  model_config = setup_lib.build_model_config(config, {"vocab_size": vocab} if vocab else {})
  example = example_batch(config, model_config)
  setup = setup_lib.ModelSetup(config, model_config, mesh, example, num_datasets(config),
                               action_tokenizer=plan_action_tokenizer(config))
  result = _compile(setup, example, batch_size)
  _BUILT.clear()  # keep only the latest executable alive
  _BUILT[key] = (mesh, model_config, vocab_source, example, setup, result)
  return _BUILT[key]


def plan(config: Any, topology: str, hbm_capacity_bytes: int | None = None
         ) -> dict[str, Any]:
  """Builds and compiles the train step of `config` for `topology`; returns the plan.

  hbm_capacity_bytes: judge `fits` against this instead of the chip's HBM (tests, or
  to keep headroom); the compile is reused for the same config and topology.
  """
  config = config_lib.with_defaults(config)
  topo = tpu_chips.resolve(topology)
  chip = topo.chip
  mesh, model_config, vocab_source, example, setup, result = _build(config, topo)
  mesh_shape = {k: int(v) for k, v in mesh.shape.items()}
  batch_size = int(config.batch_size)
  accum = int(config.optimizer.grad_accum_steps)

  shards = mesh_shape["data"] * mesh_shape["fsdp"]
  per_chip_batch = batch_size / shards
  text_len = int(example.inputs.tokens.shape[1])
  num_images = int(example.inputs.images.shape[1])
  fwd = presets.forward_flops(model_config, num_images=num_images, text_len=text_len,
                              batch=batch_size)["total"]
  model_flops = 3 * fwd  # forward + backward (2x): the MFU convention
  remat = bool(model_config.remat)
  executed_flops = model_flops + recompute_flops(model_config, num_images, text_len,
                                                 batch_size, fwd)
  peak = topo.chips * chip.bf16_flops
  capacity = int(hbm_capacity_bytes or chip.hbm_bytes)

  out: dict[str, Any] = {
      "topology": topo.topology, "accelerator": topology, "chips": topo.chips,
      "mesh": mesh_shape, "global_batch": batch_size, "per_chip_batch": per_chip_batch,
      "grad_accum_steps": accum,
      "model": {"preset": config.model.preset, "dtype": model_config.dtype,
                "remat": remat, "remat_policy": model_config.remat_policy,
                "params": presets.count_params(model_config)["total"],
                "vocab_size": model_config.llm.vocab_size, "vocab_source": vocab_source,
                "images": num_images, "text_len": text_len},
      "hbm_capacity_bytes": capacity,
      "flops_per_step": int(model_flops),
      "compile_s": round(result.seconds, 1),
      "assumed_chip": {**chip.to_dict(),
                       "notes": "step time = max(compute, hbm, ici), perfect overlap; "
                                "compute counts remat's recomputed matmuls"},
  }
  if result.compiled is None:  # the TPU compiler refused: out of HBM
    oom = result.oom
    args_b = sum(r["bytes"] for r in _largest_state_buffers(setup, top=10**9))
    if "temps" in oom:
      temps, total = oom["temps"], oom["temps"] + args_b
    else:  # "Used X of Y": X holds everything; unknown wording: at least the capacity
      total = oom.get("used", capacity + 1)
      temps = max(total - args_b, 0)
    largest = _largest_batch(per_chip_batch, args_b, temps, capacity)
    out.update({
        "hbm_per_chip_bytes": {"arguments": args_b, "outputs": 0, "temps": temps,
                               "total": total},
        "fits": False,
        "largest_buffers": oom["allocations"] + _largest_state_buffers(setup, 3),
        "largest_per_chip_batch_estimate": largest,
        "suggestion": _suggestion(config, mesh_shape, per_chip_batch, largest, args_b,
                                  temps, capacity),
        "compiler_message": oom["message"],
        "step_time_estimate_s": None, "step_time_no_overlap_s": None,
        "ici_traffic_bytes_per_chip": None, "mfu_estimate": None,
        "examples_per_s_estimate": None,
    })
    return out

  compiled = result.compiled
  mem = compiled.memory_analysis()
  args_b = int(mem.argument_size_in_bytes)
  outs_b = int(mem.output_size_in_bytes)
  alias_b = int(mem.alias_size_in_bytes)
  temps = int(mem.temp_size_in_bytes)
  code = int(getattr(mem, "generated_code_size_in_bytes", 0) or 0)
  total = args_b + outs_b - alias_b + temps + code
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  xla_flops = float(cost.get("flops", 0.0))
  xla_bytes = float(cost.get("bytes accessed", 0.0))
  hlo = compiled.as_text()
  if os.environ.get("VLAX_PLAN_DUMP_HLO"):  # for reading the program by hand
    with open(os.environ["VLAX_PLAN_DUMP_HLO"], "w") as f:
      f.write(hlo)
  coll = collectives(hlo)
  fits = total <= capacity
  largest = _largest_batch(per_chip_batch, args_b + outs_b - alias_b + code, temps,
                           capacity)

  compute_s = executed_flops / peak
  per_chip_exec = executed_flops / topo.chips
  loop_factor = max(per_chip_exec / xla_flops, 1.0) if xla_flops > 0 else 1.0
  hbm_s = xla_bytes * loop_factor / chip.hbm_bandwidth
  ici_bytes = sum(v["traffic_bytes"] for v in coll.values())
  ici_s = ici_bytes / chip.ici_bandwidth
  bounds = {"compute": compute_s, "hbm": hbm_s, "ici": ici_s}
  bound = max(bounds, key=bounds.get)
  step_s = bounds[bound]
  # The other end: collectives not overlapped with compute at all. With perfect overlap a
  # compute-bound step hides any mesh's collectives, so this is what tells meshes apart.
  serial_s = max(compute_s, hbm_s) + ici_s
  out.update({
      "hbm_per_chip_bytes": {"arguments": args_b, "outputs": outs_b, "aliased": alias_b,
                             "temps": temps, "code": code, "total": total},
      "fits": fits,
      "largest_buffers": _largest_state_buffers(setup, 3) + _largest_hlo_values(hlo, 4),
      "largest_per_chip_batch_estimate": largest,
      "replicated_state": _replicated_state(setup),
      "xla_cost": {"flops": xla_flops, "bytes_accessed": xla_bytes,
                   "optimal_seconds": float(cost.get("optimal_seconds", -1.0)),
                   "loop_factor": round(loop_factor, 2),
                   "note": "per chip; a scanned layer loop's body is counted once, so "
                           "the hbm bound scales bytes_accessed by loop_factor = "
                           "executed FLOPs per chip / XLA's flops"},
      "collectives": {k: {"count": int(v["count"]), "bytes": int(v["bytes"]),
                          "traffic_bytes": int(v["traffic_bytes"])}
                      for k, v in coll.items()},
      "step_time_bounds_s": {k: round(v, 6) for k, v in bounds.items()},
      "step_time_estimate_s": round(step_s, 6),
      "step_time_no_overlap_s": round(serial_s, 6),
      "ici_traffic_bytes_per_chip": int(ici_bytes),
      "bound": bound,
      "mfu_estimate": round(model_flops / (step_s * peak), 4) if step_s > 0 else None,
      "examples_per_s_estimate": round(batch_size / step_s, 1) if step_s > 0 else None,
  })
  if not fits:
    out["suggestion"] = _suggestion(config, mesh_shape, per_chip_batch, largest, args_b,
                                    temps, capacity)
  return out


def recompute_flops(model_config, num_images: int, text_len: int, batch: int,
                    forward: int) -> int:
  """Matmul FLOPs that remat runs again in the backward pass.

  nothing_saveable: the whole forward; dots_with_no_batch_dims_saveable: only the
  attention products (they have batch dims; the weight matmuls are saved);
  everything_saveable or no remat: none.
  """
  if not model_config.remat or model_config.remat_policy == "everything_saveable":
    return 0
  if model_config.remat_policy == "nothing_saveable":
    return int(forward)
  v, g = model_config.vision, model_config.llm
  p, s = v.num_patches, num_images * v.num_patches + text_len
  attn = num_images * v.depth * 2 * 2 * p * p * v.width
  attn += g.depth * 2 * 2 * s * s * g.num_heads * g.head_dim
  return int(batch * attn)


def _largest_batch(per_chip_batch: float, fixed: float, temps: float,
                   capacity: float) -> int | None:
  """Per-chip batch that fits if temps grow linearly with the batch (an estimate)."""
  if per_chip_batch <= 0 or temps <= 0:
    return None
  per_example = temps / per_chip_batch
  return int(max(capacity - fixed, 0) // per_example)


def _size(x: float) -> str:
  """Bytes in the largest binary unit that keeps the number >= 1 (`13.1 GiB`)."""
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(x) >= scale:
      return f"{x / scale:.3g} {unit}"
  return f"{int(x)} B"


def summary(result: Mapping[str, Any]) -> str:
  """A few lines for a person: fits, HBM per chip, step time, MFU, biggest buffers."""
  m = result["mesh"]
  hbm = result["hbm_per_chip_bytes"]
  lines = [f"vlax plan: {result['accelerator']} ({result['topology']}, {result['chips']} "
           f"chips), mesh data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']}, "
           f"global batch {result['global_batch']} ({result['per_chip_batch']:g} per chip)"]
  fits = "yes" if result["fits"] else "NO"
  lines.append(f"  fits: {fits}, {_size(hbm['total'])} of {_size(result['hbm_capacity_bytes'])}"
               f" HBM per chip (arguments {_size(hbm['arguments'])}, temporaries "
               f"{_size(hbm['temps'])})")
  step = result.get("step_time_estimate_s")
  if step:
    b = result["step_time_bounds_s"]
    lines.append(
        f"  step time >= {step:.3g} s ({result['bound']}-bound: compute {b['compute']:.3g}, "
        f"hbm {b['hbm']:.3g}, ici {b['ici']:.3g}; {result['step_time_no_overlap_s']:.3g} s "
        f"without overlap), MFU <= {result['mfu_estimate']}, "
        f"{result['examples_per_s_estimate']:g} examples/s")
    c = result["collectives"]
    lines.append("  collectives per step: " + ", ".join(
        f"{c[k]['count']} {k}" for k in ("all-gather", "reduce-scatter", "all-reduce"))
                 + f"; ICI traffic {result['ici_traffic_bytes_per_chip'] / 1e9:.3g} GB "
                 "per chip")
  biggest = sorted(result.get("largest_buffers") or [], key=lambda r: -r["bytes"])[:3]
  if biggest:
    lines.append("  biggest buffers: " + "; ".join(
        f"{r['name'][-60:]} {_size(r['bytes'])}" for r in biggest))
  if result.get("suggestion"):
    lines.append(f"  to fit: {result['suggestion']}")
  lines.append(f"  compiled in {result['compile_s']} s; estimates are roofline bounds "
               "(see the JSON's assumed_chip)")
  return "\n".join(lines)


def emit(result: Mapping[str, Any], out: str | None, text: str) -> None:
  """JSON on stdout (and to `out`), the human text after it on stderr."""
  doc = json.dumps(result, indent=2)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      f.write(doc + "\n")
  print(doc, flush=True)
  print(text, file=sys.stderr, flush=True)


def main_plan(config_path: str | None, topology: str, overrides, out: str | None) -> dict:
  """`vlax plan`: prints the plan as JSON on stdout (and writes it to `out`), and a
  summary for a person on stderr."""
  tpu_chips.resolve(topology)  # a bad name fails before anything heavy
  config = load_config(config_path, overrides)
  result = plan(config, topology)
  emit(result, out, summary(result))
  return result
