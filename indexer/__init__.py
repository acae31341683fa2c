"""simdex indexer: the model, its training, extraction and catalog building."""
