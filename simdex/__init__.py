"""simdex: an embedded vector database for images with a probabilistic similarity P for every answer.

The package has three floors, imported one way: ``simdex.cli`` → the application modules in
``simdex`` (demo, report, evaluation, sheets) → ``simdex.indexer`` (torch: model, training,
extraction) → ``simdex.engine`` (catalog, build, search, SQL; no torch).
"""

__version__ = "0.2.0"
