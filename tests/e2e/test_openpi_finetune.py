"""The openpi recipe on a tiny twin: `vlax import-openpi` -> a few `vlax train` steps of
experiments/finetune_openpi.py (LoRA, openpi's token format) -> openpi's protocol with the
DROID key map -> openpi's client gets a chunk in robot units."""

import importlib
import json
import os
import threading

import numpy as np
import pytest

from vlax.checkpoints import format as ckpt_format
from vlax.cli import main
from vlax.data.normalization import unnormalize
from vlax.data.text_tokenizer import TOY_MODEL_PATH
from vlax.errors import VlaxError
from vlax.inference import openpi_server
from vlax.inference.policy import Policy

import _openpi_utils as ou

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _need(module):
  return importlib.import_module(module) if os.environ.get("CI") else (
      pytest.importorskip(module))


websocket_client_policy = _need("openpi_client.websocket_client_policy")


def _droid_obs(rng, prompt="Put the marker in the cup"):
  """What openpi's DROID example client sends (examples/droid/main.py)."""
  return {"observation/exterior_image_1_left": rng.integers(0, 256, (48, 64, 3), np.uint8),
          "observation/wrist_image_left": rng.integers(0, 256, (48, 64, 3), np.uint8),
          "observation/joint_position": rng.normal(size=1),
          "observation/gripper_position": rng.uniform(size=1), "prompt": prompt}


def _serve(ckpt, dataset):
  policy = Policy(ckpt, dataset=dataset)
  key_map = openpi_server.load_key_map(
      os.path.join(REPO, "experiments", "openpi_key_maps", "droid.json"), dataset,
      policy.cameras)
  app = openpi_server.OpenPIPolicyServer(policy, dataset, key_map)
  srv = app.make_server("127.0.0.1", 0)
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  return policy, srv, srv.socket.getsockname()[1]


def test_import_finetune_serve_openpi_client(tmp_path, capsys):
  src, imp, run = str(tmp_path / "src"), str(tmp_path / "imp"), str(tmp_path / "run")
  ou.write_checkpoint(src, ou.tiny_config(1000, 256), dtype=ou.BF16, wrap_value=True,
                      action_dim=2, state_dim=2)
  assert main(["import-openpi", src, imp, "--text-tokenizer", str(TOY_MODEL_PATH),
               "--chunk-len", "4", "--max-len", "64"]) == 0
  assert main(["train", "--config", os.path.join(REPO, "experiments",
                                                 "finetune_openpi.py:lora"),
               "--workdir", run, f"--config.init_from={imp}/0", "--config.num_steps=2",
               "--config.batch_size=8", "--config.log_every=1",
               "--config.checkpoint_every=2", "--config.data.image_size=32",
               "--config.data.chunk_len=4", "--config.data.max_len=64",
               "--config.data.toy_episodes=20", "--config.data.shuffle_buffer=8",
               "--config.model.dtype=float32", "--config.optimizer.warmup_steps=1",
               "--config.logging.progress=False", "--config.logging.tensorboard=False"]
              ) == 0, capsys.readouterr().err
  meta = ckpt_format.read_metadata(os.path.join(run, "checkpoints"))
  imported = ckpt_format.read_metadata(imp)
  # Fine-tuning kept the imported format, tokenizers and ids.
  assert meta["action_tokenizer"]["sequence"]["format"] == "openpi"
  assert meta["action_tokenizer"]["vocab"] == imported["action_tokenizer"]["vocab"]
  assert meta["text_tokenizer"]["sha256"] == imported["text_tokenizer"]["sha256"]
  assert meta["lora"]["rank"] == 16
  # Offline eval of the fine-tune (the recipe's 4th command) reports wrong-length decodes.
  assert main(["eval", "--checkpoint", os.path.join(run, "checkpoints"), "--out",
               str(tmp_path / "eval"), "--max-batches", "1"]) == 0, capsys.readouterr().err
  with open(tmp_path / "eval" / "report.json") as f:
    report = json.load(f)
  assert isinstance(report["decode_errors"], int) and report["decode_errors"] >= 0

  policy, srv, port = _serve(os.path.join(run, "checkpoints"), "toy_reach_c")
  try:
    client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
    assert client.get_server_metadata()["state_dim"] == 2
    obs = _droid_obs(np.random.default_rng(0))
    out = client.infer(obs)
  finally:
    srv.shutdown()
  actions = out["actions"]
  assert actions.shape == (4, 2) and out["decode_errors"] >= 0
  # Robot units: the policy's decoded tokens, unnormalized with the robot's statistics.
  _, tokens = policy.predict_action(
      {"image_primary": obs["observation/exterior_image_1_left"],
       "image_wrist": obs["observation/wrist_image_left"],
       "proprio": np.concatenate([obs["observation/joint_position"],
                                  obs["observation/gripper_position"]])},
      obs["prompt"], dataset="toy_reach_c", return_tokens=True)
  st = policy.statistics["toy_reach_c"]
  norm = policy.builder.actions_from_tokens(tokens, 2, 4)
  np.testing.assert_allclose(actions, unnormalize(norm, st["action"],
                                                  st["normalization_type"]), rtol=1e-5)
  assert json.dumps(client.get_server_metadata()["key_map"]["state"]) == json.dumps(
      ["observation/joint_position", "observation/gripper_position"])


def test_serve_names_the_dataset_flag_on_a_multi_robot_checkpoint(tmp_path):
  root = str(tmp_path / "ckpt")  # the check reads the metadata before any weights
  ckpt_format.save_checkpoint(root, 0, {"x": np.zeros(1, np.float32)},
                              {"model": {}, "statistics": {"robot_a": {}, "robot_b": {}}})
  with pytest.raises(VlaxError, match=r"choose one with --dataset from \['robot_a', "
                                      r"'robot_b'\]"):
    openpi_server.serve_openpi(root, port=0, warmup=False)


def test_libero_key_map_takes_openpis_libero_client_keys():
  key_map = openpi_server.load_key_map(
      os.path.join(REPO, "experiments", "openpi_key_maps", "libero.json"), "libero",
      ("primary", "wrist", "secondary"))
  rng = np.random.default_rng(0)
  obs = {"observation/image": rng.integers(0, 256, (224, 224, 3), np.uint8),
         "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), np.uint8),
         "observation/state": rng.normal(size=8), "prompt": "put the bowl on the plate"}
  out, prompt = openpi_server.to_policy_inputs(obs, key_map, 8)
  assert sorted(out) == ["image_primary", "image_wrist", "proprio"]
  assert out["image_wrist"] is obs["observation/wrist_image"]
  np.testing.assert_allclose(out["proprio"], obs["observation/state"].astype(np.float32))
  assert prompt == obs["prompt"]
