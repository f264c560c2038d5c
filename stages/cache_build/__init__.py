"""Stage one, ``tide-cache build``: data preparation, noise, teacher passes and shard writing."""
