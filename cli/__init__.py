"""simdex command line: parses, calls engine/ or indexer/, prints."""
