"""Defaults of an index job, importable without torch (the CLI's `--help` shows them)."""

DEFAULT_BATCH_SIZE = 256  # images per forward pass
DEFAULT_SHARD_IMAGES = 16384  # images per committed shard
DEFAULT_MIN_AREA = 4  # pixels of the model's input: smaller segments are no object
DEFAULT_REGION = "mask+grid2"  # where channel means are taken (indexer.runner._region_for says why)
