"""Open X-Embodiment registry: dataset specs, real schemas, named mixtures, test data.

Importing this package is cheap (no TensorFlow); the catalog of specs (TensorFlow
standardizers) loads on the first `get_spec` / `list_datasets` call.
"""

from vlax.data.oxe.mixtures import get_mixture, list_mixtures
from vlax.data.oxe.registry import ActionEncoding, DatasetSpec, get_spec, list_datasets, register

__all__ = ["ActionEncoding", "DatasetSpec", "get_mixture", "get_spec", "list_datasets",
           "list_mixtures", "register"]
