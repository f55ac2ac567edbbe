"""Co-train on OXE robot data and web vision-language data (RT-2 style).

Starts from pretrain_oxe.py and adds web sources: TFDS caption datasets (by name and key
mapping), LLaVA-style JSON + image folders, or TFRecord shards of {image, prompt,
answer}. The web share starts at 50% and falls linearly to 20% over the first 50k steps.

  vlax train --config experiments/cotrain_oxe_web.py --workdir gs://BUCKET/runs/cotrain \\
      --config.data.data_dir=gs://BUCKET/oxe --config.init_from=gs://BUCKET/pg3b-vlax \\
      --config.data.text_tokenizer=gs://BUCKET/paligemma-3b-pt-224/tokenizer.model
"""

from vlax.experiments import pretrain_oxe


def get_config(arg: str | None = None):
  c = pretrain_oxe.get_config(arg)
  c.data.web_sources = (
      # Image captioning from TFDS (coco_captions-like schema).
      {"kind": "tfds", "name": "coco_captions", "data_dir": "gs://BUCKET/tfds",
       "image_key": "image", "answer_key": "captions/text", "prompt": "caption en",
       "weight": 1.0},
      # Visual question answering from LLaVA-style conversations.
      {"kind": "llava", "name": "llava_instruct", "path": "gs://BUCKET/llava/llava.jsonl",
       "image_dir": "gs://BUCKET/llava/images", "weight": 1.0},
  )
  c.data.web_weight = 0.5
  c.data.web_schedule = ((0, 0.5), (50_000, 0.2))
  c.data.web_on_error = "skip"
  c.data.max_len = 128
  return c
