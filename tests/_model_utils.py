"""Random model inputs shared by the model tests."""

import jax.numpy as jnp
import numpy as np


def model_inputs(config, b=2, n=2, l=8, seed=0, ragged=False):
  """VLA.__call__ inputs; prefix = the first half of the tokens.

  ragged: the second example misses camera 2 and its last 2 tokens are padding (b <= 2).
  """
  r = np.random.RandomState(seed)
  s = config.vision.image_size
  image_mask = np.ones((b, n), bool)
  lengths = np.full([b], l)
  if ragged:
    image_mask = np.array([[True, True], [True, False]][:b])
    lengths = np.array([l, l - 2][:b])
  return dict(
      images=jnp.asarray(r.uniform(-1, 1, (b, n, s, s, 3)), jnp.float32),
      image_mask=jnp.asarray(image_mask),
      tokens=jnp.asarray(r.randint(0, config.llm.vocab_size, (b, l)), jnp.int32),
      input_mask=jnp.asarray(np.arange(l)[None] < lengths[:, None]),
      prefix_mask=jnp.asarray(np.arange(l)[None] < l // 2).repeat(b, 0),
  )
