"""`vlax plan`: TPU topology names, the HLO collective parser, a real compile of the
debug model for a 4-chip v5e slice on this CPU host (libtpu's topology description;
libtpu comes with the [test] extra: `jax[tpu]`), and `--sweep` over meshes of the tiny
model in a fresh process (its stderr is where libtpu's start-up noise would show)."""

import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

from vlax import cli
from vlax.config import load_config
from vlax.errors import VlaxError
from vlax.training import plan as plan_lib
from vlax.training import plan_sweep
from vlax.training import tpu_chips

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install 'jax[tpu]')")

PLAN_KEYS = ("topology", "chips", "mesh", "global_batch", "per_chip_batch",
             "hbm_per_chip_bytes", "hbm_capacity_bytes", "fits", "largest_buffers",
             "flops_per_step", "xla_cost", "collectives", "step_time_estimate_s", "bound",
             "mfu_estimate", "examples_per_s_estimate", "compile_s", "assumed_chip",
             "replicated_state")


@pytest.mark.parametrize("name,topology,chips", [
    ("v5p-128", "v5p:4x4x4", 64), ("v4-128", "v4:4x4x4", 64),
    ("v5e-256", "v5e:16x16", 256), ("v6e-64", "v6e:8x8", 64),
    ("v5p:4x4x8", "v5p:4x4x8", 128), ("V5E:2x2", "v5e:2x2", 4)])
def test_topology_names(name, topology, chips):
  t = tpu_chips.resolve(name)
  assert (t.topology, t.chips) == (topology, chips)


def test_bad_topology_is_a_one_line_error(capsys):
  with pytest.raises(VlaxError, match="v5p-128"):
    tpu_chips.resolve("v5x-128")
  with pytest.raises(VlaxError, match="3 dimensions"):
    tpu_chips.resolve("v5p:4x4")
  assert cli.main(["plan", "--topology", "tpu-9000"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: unknown TPU topology 'tpu-9000'") and "\n" not in err


HLO = """HloModule m

%all-reduce-scatter.1 (input_0: f32[64,8]) -> f32[16,8] {
  %input_0 = f32[64,8]{1,0} parameter(0)
  %all-reduce.1 = f32[64,8]{1,0} all-reduce(%input_0), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %dynamic-slice.1 = f32[16,8]{1,0} dynamic-slice(%all-reduce.1, %c, %c), dynamic_slice_sizes={16,8}
}

%body (p: (s32[], bf16[16,8])) -> (s32[], bf16[16,8]) {
  %p = (s32[], bf16[16,8]) parameter(0)
  %all-gather.2 = bf16[64,8]{1,0} all-gather(%x), channel_id=2, replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([2,4]T(1,0)) {'axis_1'}, dimensions={0}
  %fusion.3 = f32[16,8]{1,0} fusion(%y), kind=kCustom, calls=%all-reduce-scatter.1
  ROOT %t = (s32[], bf16[16,8]) tuple(%i, %z)
}

%cond (p: (s32[], bf16[16,8])) -> pred[] {
  %p = (s32[], bf16[16,8]) parameter(0)
  %constant.9 = s32[]{:T(128)} constant(18)
  ROOT %lt = pred[] compare(%i, %constant.9), direction=LT
}

ENTRY %main (a: bf16[16,8]) -> bf16[16,8] {
  %a = bf16[16,8]{1,0} parameter(0)
  %while.1 = (s32[], bf16[16,8]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"27"}}
  %while.2 = (s32[], bf16[16,8]) while(%init), condition=%cond, body=%body
  %all-reduce.5 = (f32[], f32[4]{0}) all-reduce(%s, %v), channel_id=5, replica_groups=[1,4]<=[4], to_apply=%add
  ROOT %r = bf16[16,8]{1,0} get-tuple-element(%while.1), index=1
}
"""


def test_collectives_parser_counts_loop_trips_and_reduce_scatter_fusions():
  c = plan_lib.collectives(HLO)
  # Inside layer loops: 27 trips (known_trip_count) + 18 (the condition's constant).
  assert c["all-gather"]["count"] == 45
  assert c["all-gather"]["bytes"] == 45 * 64 * 8 * 2
  assert c["all-gather"]["traffic_bytes"] == 45 * 64 * 8 * 2 * 3 / 4
  assert c["reduce-scatter"]["count"] == 45  # all-reduce + dynamic-slice fusion
  assert c["reduce-scatter"]["bytes"] == 45 * 64 * 8 * 4
  assert c["all-reduce"]["count"] == 1 and c["all-reduce"]["bytes"] == 4 + 16
  assert c["all-reduce"]["traffic_bytes"] == 20 * 2 * 3 / 4


@needs_libtpu
@pytest.mark.slow
def test_plan_debug_model_on_v5e_2x2(tmp_path, capsys):
  overrides = ["--config.batch_size=8", "--config.model.scan_unroll=1"]
  out = tmp_path / "plan.json"
  assert cli.main(["plan", "--topology", "v5e:2x2", "--out", str(out), *overrides]) == 0
  captured = capsys.readouterr()
  printed = json.loads(captured.out)
  p = json.loads(out.read_text())
  assert p == printed
  for k in PLAN_KEYS:
    assert k in p, k
  assert (p["topology"], p["chips"], p["global_batch"]) == ("v5e:2x2", 4, 8)
  assert p["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and p["per_chip_batch"] == 2
  hbm = p["hbm_per_chip_bytes"]
  assert 0 < hbm["arguments"] <= hbm["total"] <= p["hbm_capacity_bytes"]
  assert p["hbm_capacity_bytes"] == 16 * 10**9 and p["fits"] is True
  # FSDP: weights gathered, gradients reduce-scattered (inside the rolled layer loops).
  assert p["collectives"]["all-gather"]["count"] > 0
  assert p["collectives"]["reduce-scatter"]["count"] > 0
  assert p["bound"] in ("compute", "hbm", "ici")
  assert 0 < p["mfu_estimate"] <= 1 and p["step_time_estimate_s"] > 0
  assert p["largest_buffers"] and all(b["bytes"] > 0 for b in p["largest_buffers"])
  ici = sum(v["traffic_bytes"] for v in p["collectives"].values())
  assert p["ici_traffic_bytes_per_chip"] == int(ici) > 0
  assert p["step_time_no_overlap_s"] >= p["step_time_estimate_s"]
  # The summary for a person goes to stderr (stdout stays one JSON document).
  err = captured.err
  assert "fits: yes" in err and "HBM per chip" in err and "MFU <=" in err
  assert "biggest buffers:" in err and "step time >=" in err

  # The same compile judged against a smaller HBM: does not fit, says what to do.
  config = load_config(None, [o[len("--config."):] for o in overrides])
  small = plan_lib.plan(config, "v5e:2x2", hbm_capacity_bytes=hbm["total"] // 2)
  assert small["compile_s"] == p["compile_s"]  # reused, not recompiled
  assert small["fits"] is False and small["suggestion"]
  assert small["largest_per_chip_batch_estimate"] < small["per_chip_batch"]


def test_parse_out_of_hbm_refusals():
  # Recorded from libtpu 0.0.42 compiling the debug model at batch 262144 for v5e:2x2.
  oom = plan_lib._parse_oom(  # pylint: disable=protected-access
      "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
      "temporaries (745.68G) exceeds available HBM (15.75G).")
  assert oom["temps"] == int(745.68 * 2**30) and oom["available"] == int(15.75 * 2**30)
  oom = plan_lib._parse_oom(  # pylint: disable=protected-access
      "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
      "space hbm. Used 20.50G of 15.75G hbm. Exceeded hbm capacity by 4.75G.\n\n"
      "  1. Size: 3.00G\n     Operator: op_name=\"jit(step)/dot_general\"\n")
  assert oom["used"] == int(20.5 * 2**30)
  assert oom["allocations"] == [{"name": 'op_name="jit(step)/dot_general"',
                                 "bytes": 3 * 2**30}]
  assert plan_lib._parse_oom("INVALID_ARGUMENT: other") is None  # pylint: disable=protected-access


def _entry(mesh, fits=True, step=1.0, no_overlap=1.2, ici=1e9, batch=64):
  return {"mesh": mesh, "fits": fits, "global_batch": batch, "step_time_estimate_s": step,
          "step_time_no_overlap_s": no_overlap, "ici_traffic_bytes_per_chip": ici}


def test_sweep_ranking_fits_then_step_time_then_ici():
  fast_no_fit = _entry("a", fits=False, step=0.1)
  slow = _entry("b", step=2.0, no_overlap=2.0, ici=1e6)
  chatty = _entry("c", ici=9e9, no_overlap=1.9)  # same lower bound: no-overlap decides
  quiet = _entry("d", ici=1e9, no_overlap=1.1)
  big_batch = _entry("e", step=1.5, no_overlap=1.8, ici=2e9, batch=128)  # per example
  ranked = sorted([fast_no_fit, slow, chatty, quiet, big_batch], key=plan_sweep.rank_key)
  assert [e["mesh"] for e in ranked] == ["e", "d", "c", "b", "a"]


def test_candidate_meshes_and_options():
  model = types.SimpleNamespace(llm=types.SimpleNamespace(num_heads=8),
                                vision=types.SimpleNamespace(num_heads=16))
  got = plan_sweep.candidate_meshes(64, 2048, 1, model)
  assert {"data": 1, "fsdp": 64, "tensor": 1} in got
  assert {"data": 4, "fsdp": 16, "tensor": 1} in got and len(got) == 5 * 3
  assert all(m["data"] * m["fsdp"] * m["tensor"] == 64 for m in got)
  # The batch must split over data x fsdp (x grad accumulation); fsdp a power of two.
  assert plan_sweep.candidate_meshes(64, 32, 1, model, tensor_sizes=(1,)) == []
  assert plan_sweep.candidate_meshes(64, 32, 1, model, tensor_sizes=(2,)) == [
      {"data": d, "fsdp": 32 // d, "tensor": 2} for d in (1, 2, 4, 8, 16)]
  assert plan_sweep.candidate_meshes(64, 32, 2, model, tensor_sizes=(2,)) == []
  assert plan_sweep.candidate_meshes(24, 48, 1, model, tensor_sizes=(1,)) == []
  # tensor must divide both towers' heads (12 heads: 8 does not).
  model.vision.num_heads = 12
  assert all(m["tensor"] != 8 for m in
             plan_sweep.candidate_meshes(64, 2048, 1, model, tensor_sizes=(1, 8)))
  assert plan_sweep.parse_meshes("4x16x1, 1x64x1") == [
      {"data": 4, "fsdp": 16, "tensor": 1}, {"data": 1, "fsdp": 64, "tensor": 1}]
  with pytest.raises(VlaxError, match="4x16"):
    plan_sweep.parse_meshes("4x16")
  with pytest.raises(VlaxError, match="--sweep-batch"):
    plan_sweep.parse_sizes("8,x", "--sweep-batch")
  c = plan_sweep._with_remat(load_config(None, ["model.overrides=llm.depth=2"]),  # pylint: disable=protected-access
                             "dots_with_no_batch_dims_saveable")
  assert c.model.remat and c.model.overrides.endswith("remat_policy=dots_with_no_batch_dims_saveable")
  assert not plan_sweep._with_remat(c, "none").model.remat  # pylint: disable=protected-access


@needs_libtpu
def test_meshes_jax_cannot_lay_onto_the_torus_are_skipped():
  topo = tpu_chips.resolve("v5p-128")
  assert plan_lib.topology_mesh({"data": 4, "fsdp": 16, "tensor": 1}, topo).shape == {
      "data": 4, "fsdp": 16, "tensor": 1}
  with pytest.raises(VlaxError, match="cannot be laid out on v5p:4x4x4"):
    plan_lib.topology_mesh({"data": 2, "fsdp": 32, "tensor": 1}, topo)
  jobs = [({"data": d, "fsdp": 64 // d, "tensor": 1}, 2048, None, None) for d in (1, 2, 4)]
  keep, skipped = plan_sweep._placeable(jobs, topo)  # pylint: disable=protected-access
  assert [j[0]["data"] for j in keep] == [1, 4]
  assert [s["mesh"] for s in skipped] == ["2x32x1"] and "laid out" in skipped[0]["reason"]


@needs_libtpu
def test_shipped_pod_meshes_lay_onto_their_slices():
  path = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "pretrain_oxe.py")
  spec = importlib.util.spec_from_file_location("pretrain_oxe_for_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.MESHES
  for name, (data, fsdp, tensor) in module.MESHES.items():
    c = load_config(f"{path}:{name}")
    assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (data, fsdp, tensor)
    mesh = plan_lib.topology_mesh(c.mesh, tpu_chips.resolve(name))
    assert c.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0, name
  with pytest.raises(VlaxError, match="no mesh for slice"):
    load_config(f"{path}:v9-1")


@needs_libtpu
@pytest.mark.slow
def test_plan_sweep_cli_in_a_fresh_process(tmp_path):
  out = tmp_path / "sweep.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [os.getcwd(), os.environ.get("PYTHONPATH", "")]))
  for k in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "TPU_STDERR_LOG_LEVEL"):
    env.pop(k, None)
  r = subprocess.run(
      [sys.executable, "-m", "vlax.cli", "plan", "--topology", "v5e:2x2", "--sweep",
       "--meshes", "1x4x1,4x1x1", "--out", str(out), "--config.model.preset=tiny",
       "--config.data.image_size=32", "--config.batch_size=8",
       "--config.model.scan_unroll=1"],
      capture_output=True, text=True, env=env, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  result = json.loads(r.stdout)
  assert result == json.loads(out.read_text())
  assert (result["topology"], result["chips"]) == ("v5e:2x2", 4)
  cands = result["candidates"]
  assert sorted(plan_sweep._label(c["mesh"]) for c in cands) == ["1x4x1", "4x1x1"]  # pylint: disable=protected-access
  assert [c["rank"] for c in cands] == [1, 2]
  for c in cands:
    for k in PLAN_KEYS:
      assert k in c, k
  chosen = result["chosen"]
  assert chosen == cands[0] and chosen["fits"] is True
  other = cands[1]
  per_ex = lambda e: e["step_time_estimate_s"] / e["global_batch"]  # pylint: disable=unnecessary-lambda-assignment
  assert per_ex(chosen) <= per_ex(other) * 1.001
  if f"{per_ex(chosen):.3g}" == f"{per_ex(other):.3g}":
    assert chosen["step_time_no_overlap_s"] <= other["step_time_no_overlap_s"]
  # Pure data parallelism all-reduces the gradients and gathers nothing; FSDP gathers.
  by_mesh = {c["mesh"]["data"]: c for c in cands}
  assert by_mesh[4]["collectives"]["all-gather"]["count"] == 0
  assert by_mesh[1]["collectives"]["all-gather"]["count"] > 0
  # stderr: progress, the ranked table and the choice; none of libtpu's start-up noise.
  err = r.stderr
  assert "| rank | mesh" in err and "chosen: --config.mesh.data=" in err
  m = chosen["mesh"]
  assert f"chosen: --config.mesh.data={m['data']} --config.mesh.fsdp={m['fsdp']}" in err
  for noise in ("TPU_WORKER_HOSTNAMES", "E0000", "Failed to find host bounds",
                "INVALID_ARGUMENT"):
    assert noise not in err, noise
