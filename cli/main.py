"""The `simdex` command: a click group whose subcommands are imported only when run,
so `simdex query` by id never pays for importing torch."""

from __future__ import annotations

import importlib
import signal
import threading

import click

# name -> "module:attribute" of a click command. One line per command; each lives in cli/<name>.py.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("simdex.cli.train", "Train the sparse U-Net (the paper's method) on a source of images."),
    "index": ("simdex.cli.index", "Index a source of images into a catalog: one row of features per object."),
    "build": ("simdex.cli.build", "Prune, normalise, weigh (Ω) and index a catalog's features for search."),
    "query": ("simdex.cli.query", "Find the objects most similar to objects or images, with their probability P."),
    "explain": ("simdex.cli.explain", "Similarity maps: where on the two images the P of an answer comes from."),
    "check": ("simdex.cli.check", "Verify every file of a catalog (sizes, SHA-256); say what is damaged and how to recover."),
    "delete": ("simdex.cli.delete", "Hide objects from every query result (survives rebuilds)."),
    "demo": ("simdex.cli.demo", "The main job: index Fashion-MNIST and colour scenes, build, query, write HTML reports."),
    "eval": ("simdex.cli.eval", "Retrieval quality (precision@k, mAP): fuzzy P against other rankings."),
    "scenes": ("simdex.cli.scenes", "Write the scenes benchmark: items composited onto colour backgrounds, with masks."),
    "sql": ("simdex.cli.sql", "Run SQL over a catalog's objects, features, build and search results (read-only)."),
    "serve": ("simdex.cli.serve", "Serve a catalog: a JSON API and a search page (model and build loaded once)."),
    "rsm": ("simdex.cli.rsm", "Semantic and spatio-semantic RSMs of a set of images (Wald et al.)."),
    "labels": ("simdex.cli.labels", "Rank the labels most similar to a label (Park: Welch t-tests per channel)."),
    "model-info": ("simdex.cli.train", "Show a model's config, layers, checksum; measure its Dice and sparsity."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return getattr(module, name.replace("-", "_"))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Show one-line help without importing every command module.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="simdex")
def main() -> None:
    """simdex: find the objects in an image catalog most similar to a query, with a
    probabilistic similarity P in [0, 1] for every answer.

    \b
    Typical session:
      simdex index fashion-mnist --catalog cat/      # images -> per-object features
      simdex build --catalog cat/                    # pruning, Omega, FAISS index
      simdex query --catalog cat/ 42                 # the 10 objects most like object 42
    """
    # `kill` (SIGTERM) stops a job the way Ctrl-C does: training saves its checkpoint, the
    # indexer leaves its journal consistent (it survives SIGKILL too), click prints "Aborted!".
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # python -m simdex.cli.main
    main()
