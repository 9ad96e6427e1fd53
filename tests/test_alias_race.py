"""The champion alias cannot be raced: registrations of one model name that happen at the same
moment (two runs finishing together, tune workers) all end with the alias on the best version,
and each process says where the alias really points. Real processes behind a barrier, on the
session's sqlite store, repeated."""

from __future__ import annotations

import multiprocessing as mp
import queue
import random
from pathlib import Path

import pytest
from helpers import children_of
from mlflow import MlflowClient

from harness import promotion

ROUNDS = 4


def _register_rounds(uri: str, names: list[str], values: list[float], barrier: mp.synchronize.Barrier,
                     out: mp.Queue) -> None:
    """One worker: for each round, wait for the others, then register `uri` under that round's name."""
    from harness.tracking import Tracker

    tracker = Tracker.open()
    for name, value in zip(names, values):
        barrier.wait(timeout=120)
        result = promotion.register(tracker, uri, name, value)
        out.put((name, result.version, value, result.moved, result.final, result.describe()))


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_registrations_always_end_on_the_best_version(quickstart_store: Path, workers: int) -> None:
    (child,) = children_of("quickstart")
    uri = f"runs:/{child.info.run_id}/model"
    rng = random.Random(workers)
    names = [f"race-{workers}-{i}-{rng.randrange(10**6)}" for i in range(ROUNDS)]
    # Each round, a different worker holds the best value (and another the worst).
    values = [[round(rng.uniform(0.1, 0.9), 6) for _ in range(ROUNDS)] for _ in range(workers)]
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_register_rounds, args=(uri, names, values[w], barrier, out)) for w in range(workers)]
    for p in procs:
        p.start()
    results = []
    while len(results) < workers * ROUNDS:  # a worker that died fails the test now, not at a timeout
        try:
            results.append(out.get(timeout=2))
        except queue.Empty:
            assert all(p.is_alive() or p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    client = MlflowClient()
    for name in names:
        mine = [r for r in results if r[0] == name]
        best = max(mine, key=lambda r: r[2])
        champion = client.get_model_version_by_alias(name, "champion")
        assert str(champion.version) == best[1], (name, mine)
        # Every process tells the truth as of its answer: the best one says the alias is on it; any
        # other names a version at least as good as its own (one registered earlier may have held
        # the alias briefly, before a better one was registered, and says so).
        assert best[3] and best[4] == (best[1], best[2]), mine
        assert all(final[1] >= value and (moved == (final[0] == version))
                   for _, version, value, moved, final, _ in mine), mine
        assert all(f"version {final[0]}" in text for _, _, _, moved, final, text in mine if not moved), mine
        tags = {str(v.version): v.tags for v in client.search_model_versions(f"name = '{name}'")}
        assert tags[best[1]]["harness.promoted"] == "true"
        assert all(tags[version]["harness.promoted"] == str(moved).lower() for _, version, _, moved, _, _ in mine)


def test_a_hand_moved_alias_on_an_untagged_version_is_left_alone(quickstart_store: Path) -> None:
    from harness.tracking import Tracker

    (child,) = children_of("quickstart")
    uri = f"runs:/{child.info.run_id}/model"
    client, tracker = MlflowClient(), Tracker.open()
    name = f"by-hand-{random.randrange(10**6)}"
    client.create_registered_model(name)
    by_hand = client.create_model_version(name, uri, run_id=child.info.run_id)
    client.set_registered_model_alias(name, "champion", by_hand.version)
    result = promotion.register(tracker, uri, name, 0.99)
    assert not result.moved and "no best_val_acc tag" in result.describe()
    assert client.get_model_version_by_alias(name, "champion").version == by_hand.version
