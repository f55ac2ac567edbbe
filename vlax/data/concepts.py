"""Held-out concepts: keep one word (a colour) out of a data stream, and prove it.

The co-training transfer experiment (notes/cotraining-evidence.md section 4) trains on
robot data that never names a concept H ("purple"), while the web data may show and name
it or not (its web-minus-H control). A leak would make any transfer result meaningless,
so the streams count what involves H in `DataCounters`:

  robot/concept_mention   robot examples whose instruction names H (that were kept)
  robot/concept_dropped   robot examples removed because their instruction names H
  web/concept_mention     web examples whose prompt, answer or drawn colours involve H
  web/concept_dropped     web examples removed for that (`web_drop_concept`)

(each also per dataset, "<source>/<reason>/<name>"). The toy robot scenes themselves are
kept free of H by the colour pools of `vlax.envs.toy_env.held_out_colors`; the robot filter
here catches any instruction that still names H (e.g. a real dataset).
"""

from __future__ import annotations

import functools
import re

from vlax.data.sequence import DataCounters, filter_flagged
from vlax.errors import VlaxError
from vlax.utils import get_path


def check_concept(concept: str) -> str:
  """A concept is one word ("" = none); anything else is a config error."""
  concept = str(concept or "").strip()
  if concept and not re.fullmatch(r"[A-Za-z]+", concept):
    raise VlaxError(f"config.data.held_out_concept must be one word of letters (e.g. "
                    f"'purple'), got {concept!r}")
  return concept.lower()


@functools.lru_cache(maxsize=64)
def _pattern(concept: str) -> re.Pattern:
  return re.compile(rf"\b{re.escape(concept)}\b", re.IGNORECASE)


def mentions(text: str, concept: str) -> bool:
  """Whole word, any case: "the Purple block" names purple, "purplish" does not."""
  return bool(concept) and _pattern(concept).search(text) is not None


class ConceptCounter:
  """Counts (and optionally drops) the examples of one source that involve a concept."""

  def __init__(self, concept: str, source: str, counters: DataCounters, drop: bool):
    self.concept = concept
    self.source = source
    self.counters = counters
    self.drop = drop

  def keep(self, text: str, dataset: str) -> bool:
    """Counts `text` if it involves the concept; False when it is to be dropped."""
    if not mentions(text, self.concept):
      return True
    self.counters.add(self.source, "concept_dropped" if self.drop else "concept_mention",
                      dataset)
    return not self.drop

  def keep_tf(self, text: bytes, dataset: bytes) -> bool:
    """numpy_function form of `keep`."""
    return self.keep(text.decode("utf-8", errors="replace"),
                     dataset.decode("utf-8", errors="replace"))


def filter_robot_frames(frames, concept: str, counters: DataCounters, drop: bool):
  """tf.data of robot frames -> the same, counting (and with `drop` removing) the frames
  whose `language_instruction` names `concept`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  counter = ConceptCounter(concept, "robot", counters, drop)

  def fn(frame):
    name = frame["dataset_name"] if "dataset_name" in frame else tf.constant("")
    keep = tf.numpy_function(counter.keep_tf,
                             [get_path(frame, "language_instruction"), name], tf.bool,
                             stateful=True)
    return frame, tf.ensure_shape(keep, [])

  return filter_flagged(frames.map(fn, num_parallel_calls=tf.data.AUTOTUNE,
                                   deterministic=True))
