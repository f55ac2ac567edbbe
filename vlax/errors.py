"""One exception type for bad user input, so the CLI can print it as a one-line error."""


class VlaxError(ValueError):
  """Bad input (a file, dataset, key, parameter or step); the message names the culprit."""
