"""
Same-run comparisons of checkouts (``--tree DIR``, each with its own
.venv): the rounds alternate between the trees, and each run is the
bench script itself with ``--inner TREE``, in that tree's interpreter with
that tree's cdrd first on the path, printing one JSON line.  A bench
script imports these helpers from its own checkout, then takes that
checkout off the path; `run_inner` refuses a run that imported another
cdrd than the tree's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path


def alternating(trees: list[Path], rounds: int) -> Iterator[Path]:
    """The trees, `rounds` times, every other round in reverse (A B B A ...)."""
    for rnd in range(rounds):
        yield from (trees if rnd % 2 == 0 else list(reversed(trees)))


def run_inner(script: Path, tree: Path, args: list[str], timeout: float = 600) -> dict:
    """One run of `script --inner TREE ARGS` in `tree`: its last line, as JSON."""
    done = subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), str(script), "--inner", str(tree), *args],
        cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{tree.name}: failed\n{done.stderr.decode()[-1500:]}")
    result = json.loads(done.stdout.decode().splitlines()[-1])
    if not Path(result["cdrd"]).resolve().is_relative_to(tree.resolve()):
        # a comparison of one cdrd with itself would look like "no change"
        raise RuntimeError(f"{tree.name}: the run imported {result['cdrd']}, not the tree's cdrd")
    return result


def runs(script: Path, trees: list[Path], rounds: int, args: list[str]) -> Iterator[tuple[Path, dict]]:
    """(tree, its run's JSON) for every run, alternating (RuntimeError: a run failed)."""
    for tree in alternating(trees, rounds):
        yield tree, run_inner(script, tree, args)


def tree_options(parser: argparse.ArgumentParser) -> None:
    """--rounds, --tree (repeatable) and the hidden --inner."""
    parser.add_argument("--rounds", type=int, default=3, help="runs per tree")
    parser.add_argument("--tree", action="append", type=Path,
                        help="a checkout with its own .venv (repeat: alternating rounds)")
    parser.add_argument("--inner", help=argparse.SUPPRESS)


def inner_or_trees(args, inner, root: Path) -> list[Path] | None:
    """In an ``--inner`` run, print ``inner(args)`` as JSON and return None;
    else the trees to compare (this checkout where none is given)."""
    if args.inner:
        import cdrd

        print(json.dumps({**inner(args), "cdrd": cdrd.__file__}))
        return None
    return [t.resolve() for t in (args.tree or [root])]
