"""`vlax plan`: TPU topology names, the HLO collective parser, and a real compile of the
debug model for a 4-chip v5e slice on this CPU host (libtpu's topology description;
libtpu comes with the [test] extra: `jax[tpu]`)."""

import importlib.util
import json

import pytest

from vlax import cli
from vlax.config import load_config
from vlax.errors import VlaxError
from vlax.training import plan as plan_lib
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
  printed = json.loads(capsys.readouterr().out)
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
