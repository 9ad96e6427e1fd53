"""Data-parallel training on this CPU: 2 processes, gloo, through `harness run --nproc-per-node 2`
(PyTorch's launcher) and through `torchrun` itself.

Made once per module (they cost a few seconds each): an uninterrupted 2-process run, a 2-process
run whose rank 1 was killed with -9 after its first checkpoint, and a 1-process run stopped after
its first checkpoint. Each test works on a private copy of the one it needs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    children,
    copy_experiment,
    folder_env,
    free_port,
    harness,
    harness_here,
    harness_popen,
    history,
    one_error_line,
    python_popen,
    runs,
    wait_for_checkpoint,
    write_experiment,
)

from harness.tracking import FAILURE_TAG

EXPERIMENT = """
from harness.config import TrainConfig
from harness.experiment import Experiment

base = TrainConfig(model="lenet_relu", dataset="synthetic", epochs={epochs}, train_limit={limit}, batch_size={batch},
                   augment=True, lr=0.02, seed=3)
experiment = Experiment(name="{name}", description="data-parallel test", variants={variants})
"""
# b's lr was 0.05: at that lr the 3-epoch trajectory is chaotic enough that the rank-dependent
# augmentation draws alone moved the 2-process test accuracy to 0.8625 vs 0.998 (reproduced on this
# tree and on the one before it, with today's dependencies); at 0.03 the runs agree as they should.
TWO_VARIANTS = '{"a": base, "b": base.override(lr=0.03)}'
ONE_VARIANT = '{"net": base}'
EPOCHS = 3
# Test accuracy of 2 processes vs 1 with the same global batch and seed: the gradients are the
# same up to float summation order, but the runs drift apart through the augmentation draws
# (each rank has its own stream). Measured: 0.9995 vs 0.9995 and 0.9875 vs 0.9995.
ACCURACY_TOLERANCE = 0.03
KILL_EPOCHS = 5  # the killed run's: it is killed after its first
KILL_BOUND_SECONDS = 60  # a rank killed with -9: the command must end within this


def setup(root: Path, name: str, variants: str, epochs: int = EPOCHS, batch: int = 16,
          limit: int = 800) -> dict[str, str]:
    """A working folder with one experiment; returns the environment to run `harness` in."""
    write_experiment(root, name, EXPERIMENT.format(name=name, epochs=epochs, variants=variants, batch=batch,
                                                   limit=limit))
    return environment(root)


def environment(root: Path) -> dict[str, str]:
    return {**folder_env(root), "HARNESS_DIST_TIMEOUT": "60", "COLUMNS": "200"}


def copy(template: Path, dest: Path) -> tuple[Path, dict[str, str]]:
    shutil.copytree(template, dest)
    return dest, environment(dest)


def worker_pid(launcher: int, rank: int) -> int:
    """The pid of the process of `rank` among the launcher's children."""
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(pid)
    raise AssertionError(f"no process of rank {rank} under {launcher}")


# ----------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """An uninterrupted `harness run dp --nproc-per-node 2` (two variants)."""
    root = tmp_path_factory.mktemp("dp2")
    env = setup(root, "dp", TWO_VARIANTS)
    return root, harness("run", "dp", "--nproc-per-node", "2", cwd=root, env=env)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str], float]:
    """`harness run dpkill --nproc-per-node 2` with rank 1 killed (-9) after the first checkpoint:
    (folder, the command's outcome, seconds from the kill to the command's end)."""
    root = tmp_path_factory.mktemp("dpkill")
    env = setup(root, "dpkill", ONE_VARIANT, epochs=KILL_EPOCHS)
    proc = harness_popen("run", "dpkill", "--nproc-per-node", "2", cwd=root, env=env)
    wait_for_checkpoint(proc, root / "ckpt")
    os.kill(worker_pid(proc.pid, 1), signal.SIGKILL)
    killed = time.monotonic()
    out, err = proc.communicate(timeout=KILL_BOUND_SECONDS + 30)
    return root, subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - killed


@pytest.fixture(scope="module")
def reference_8_epochs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The killed run's experiment trained by 2 processes without interruption."""
    root = tmp_path_factory.mktemp("dpref")
    env = setup(root, "dpkill", ONE_VARIANT, epochs=KILL_EPOCHS)
    result = harness("run", "dpkill", "--nproc-per-node", "2", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    return root


# ----------------------------------------------------------------- harness run --nproc-per-node 2


def test_two_processes_record_one_child_per_variant_with_one_point_per_epoch(two_process_run, tmp_path: Path) -> None:
    root, result = two_process_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    uri = environment(root)["MLFLOW_TRACKING_URI"]
    runs = children(uri)
    assert sorted(r.data.tags["harness.variant"] for r in runs) == ["a", "b"]  # one child per variant, not per rank
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["world_size"] == "2"
        assert run.data.params["per_device_batch_size"] == "8"
        assert run.data.params["backend"] == "gloo"
        assert run.data.params["nnodes"] == "1"
        assert run.data.params["batch_size"] == "16"  # the global batch, as written
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "images_per_second", "epoch_seconds"):
            assert [step for step, _ in history(uri, run.info.run_id, key)] == list(range(1, EPOCHS + 1)), key
    # The table is printed once (by rank 0): one title, one row per variant.
    rows = [line for line in result.stdout.splitlines() if "FINISHED" in line and "variants of run" not in line]
    assert result.stdout.count("variants of run") == 1 and len(rows) == 2, result.stdout
    assert "data-parallel" not in result.stdout, result.stdout

    # The same experiment on one process, same global batch and seed: close test accuracy.
    env = setup(tmp_path, "dp", TWO_VARIANTS)
    single = harness_here("run", "dp", cwd=tmp_path, env=env)
    assert single.returncode == 0, single.stderr
    one = {r.data.tags["harness.variant"]: r.data.metrics["test_acc"] for r in children(env["MLFLOW_TRACKING_URI"])}
    two = {r.data.tags["harness.variant"]: r.data.metrics["test_acc"] for r in runs}
    print("test accuracy, 1 vs 2 processes:", {v: (one[v], two[v]) for v in one})
    for variant in one:
        assert abs(one[variant] - two[variant]) <= ACCURACY_TOLERANCE, (variant, one[variant], two[variant])


def test_two_process_checkpoint_loads_into_one_process_and_data_parallel(two_process_run) -> None:
    from harness import checkpoint
    from harness.config import TrainConfig
    from harness.models import build_model

    root, _ = two_process_run
    (best,) = list((root / "ckpt").glob("*/best.pt"))[:1]
    saved = checkpoint.load(best)
    assert not any(k.startswith("module.") for k in saved["model"])  # plain keys
    config = TrainConfig.from_dict(saved["config"])

    def fresh() -> torch.nn.Module:
        return build_model(config.model, in_channels=1, num_classes=10, image_size=28)

    plain, wrapped = fresh(), torch.nn.DataParallel(fresh())
    checkpoint.load_weights(plain, best)
    checkpoint.load_weights(wrapped, best)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(plain.eval()(x), wrapped.eval()(x))
    # A checkpoint saved from a wrapped model (keys prefixed `module.`) loads into a plain one.
    other = fresh()
    checkpoint.load_weights(other, {"model": wrapped.state_dict()})
    assert torch.equal(other.eval()(x), plain(x))


def test_a_rank_killed_with_sigkill_ends_the_command_in_bounded_time_and_resume_matches(
        killed_run, reference_8_epochs, tmp_path: Path) -> None:
    template, result, seconds = killed_run
    assert seconds < KILL_BOUND_SECONDS
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "rank 1" in line and "SIGKILL" in line and "--resume --nproc-per-node 2" in line, line
    root, env = copy(template, tmp_path / "a")
    uri = env["MLFLOW_TRACKING_URI"]
    assert not [r for r in runs(uri) if r.info.status == "RUNNING"]
    (run,) = children(uri)
    assert run.info.status == "FAILED" and "rank 1" in run.data.tags[FAILURE_TAG]

    resumed = harness("run", "dpkill", "--resume", "--nproc-per-node", "2", cwd=root, env=env)
    assert resumed.returncode == 0, resumed.stderr
    (run,) = children(uri)
    (reference,) = children(environment(reference_8_epochs)["MLFLOW_TRACKING_URI"])
    for key in ("train_loss", "val_loss", "val_acc"):
        got, want = history(uri, run.info.run_id, key), history(environment(reference_8_epochs)["MLFLOW_TRACKING_URI"],
                                                                reference.info.run_id, key)
        assert [s for s, _ in got] == list(range(1, KILL_EPOCHS + 1)), key  # no epoch twice, none missing
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5, abs=1e-6), key


def test_rank_0_killed_leaves_the_launcher_to_mark_the_runs_failed(tmp_path: Path) -> None:
    """Rank 0 (the one that records) dies without a word: the launcher process ends the runs."""
    env = setup(tmp_path, "dpkill", ONE_VARIANT, epochs=50, batch=4)
    proc = harness_popen("run", "dpkill", "--nproc-per-node", "2", cwd=tmp_path, env=env)
    wait_for_checkpoint(proc, tmp_path / "ckpt")
    os.kill(worker_pid(proc.pid, 0), signal.SIGKILL)
    out, err = proc.communicate(timeout=KILL_BOUND_SECONDS)
    assert proc.returncode == 2
    line = one_error_line(err)
    assert "process of rank 0 was killed by SIGKILL" in line, line
    found = runs(env["MLFLOW_TRACKING_URI"])
    assert {r.info.status for r in found} == {"FAILED"}, [(r.info.run_name, r.info.status) for r in found]
    assert all("rank 0 was killed by SIGKILL" in r.data.tags[FAILURE_TAG] for r in found)


def test_a_two_process_checkpoint_resumes_on_one_process_saying_what_changed(killed_run, tmp_path: Path) -> None:
    template, _, _ = killed_run
    root, env = copy(template, tmp_path / "b")
    resumed = harness_here("run", "dpkill", "--resume", cwd=root, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "written by 2 process(es), resumed on 1" in resumed.stdout, resumed.stdout
    (run,) = children(env["MLFLOW_TRACKING_URI"])
    assert run.info.status == "FINISHED" and run.data.tags["harness.resumed_world_size"] == "1"
    assert ([s for s, _ in history(env["MLFLOW_TRACKING_URI"], run.info.run_id, "train_loss")]
            == list(range(1, KILL_EPOCHS + 1)))


def test_a_one_process_checkpoint_resumes_on_two(tmp_path: Path) -> None:
    # Small steps (batch 4) so that the stop comes well before the last epoch.
    env = setup(tmp_path, "dpkill", ONE_VARIANT, epochs=4, batch=4, limit=400)
    proc = harness_popen("run", "dpkill", cwd=tmp_path, env=env)
    wait_for_checkpoint(proc, tmp_path / "ckpt")
    proc.terminate()
    proc.communicate(timeout=60)
    assert children(env["MLFLOW_TRACKING_URI"])[0].info.status == "KILLED"
    resumed = harness("run", "dpkill", "--resume", "--nproc-per-node", "2", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "written by 1 process(es), resumed on 2" in resumed.stdout, resumed.stdout
    (run,) = children(env["MLFLOW_TRACKING_URI"])
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(env["MLFLOW_TRACKING_URI"], run.info.run_id, "train_loss")] == list(range(1, 5))


def test_ctrl_c_stops_every_process_and_marks_the_runs_killed(tmp_path: Path) -> None:
    env = setup(tmp_path, "dpstop", ONE_VARIANT, epochs=50, batch=4)
    proc = harness_popen("run", "dpstop", "--nproc-per-node", "2", cwd=tmp_path, env=env, start_new_session=True)
    wait_for_checkpoint(proc, tmp_path / "ckpt")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=KILL_BOUND_SECONDS)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("Interrupted: runs marked KILLED"), err
    found = runs(env["MLFLOW_TRACKING_URI"])
    assert {r.info.status for r in found} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in found]


# ----------------------------------------------------------------- torchrun, two "machines"


@pytest.mark.parametrize("launcher", ["torchrun", "harness"])
def test_two_machines_train_one_variant_into_one_run(tmp_path: Path, launcher: str) -> None:
    """Two "machines" on one host: `torchrun --nnodes 2 ... -m harness run dp` on each, or the
    harness's own `harness run dp --nnodes 2 --node-rank R --rdzv-endpoint ...`."""
    env = setup(tmp_path, "dp", ONE_VARIANT, epochs=1)
    port = free_port()
    options = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    commands = {
        "torchrun": lambda rank: ["-m", "torch.distributed.run", *options, "--node-rank", str(rank), "-m", "harness",
                                  "run", "dp"],
        "harness": lambda rank: ["-m", "harness", "run", "dp", *options, "--node-rank", str(rank)],
    }
    nodes = [python_popen(*commands[launcher](rank), cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"})
             for rank in (0, 1)]
    outcomes = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outcomes
    (run,) = children(env["MLFLOW_TRACKING_URI"])
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2" and run.data.params["nnodes"] == "2"
    assert outcomes[1][0].count("FINISHED") == 0  # only rank 0 prints the table


# ----------------------------------------------------------------- sharding


def test_training_shards_cover_every_sample_once_per_epoch() -> None:
    from harness.data.in_memory import InMemorySplit

    n = 103
    split = InMemorySplit(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))
    seen: list[int] = []
    counts = []
    for rank in (0, 1, 2):
        batches = list(split.train_batches(12, torch.Generator().manual_seed(5), rank, 3, epoch=1, seed=0))
        counts.append(len(batches))
        seen += [i for _, y, _ in batches for i in y.tolist()]
        assert all(size == min(12, n - 12 * k) for k, (_, _, size) in enumerate(batches))
    assert counts[0] == counts[1] == counts[2] == 9  # same number of steps on every rank
    assert sorted(seen) == list(range(n))  # the last global batch of 7 is split, none dropped or repeated
    # A last global batch smaller than the world size is dropped (on every rank).
    small = InMemorySplit(torch.zeros(25, 1, 2, 2, dtype=torch.uint8), torch.arange(25))
    assert len(list(small.train_batches(12, torch.Generator().manual_seed(5), 0, 3, epoch=1, seed=0))) == 2


def _evaluate_rank(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from harness.config import TrainConfig
    from harness.data import load_data
    from harness.distributed import Dist
    from harness.train import build_trainer, evaluate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    config = TrainConfig(model="lenet_relu", dataset="digits", epochs=1, batch_size=16, eval_batch_size=50, seed=1)
    data = load_data(config)
    t = build_trainer(config, data, Dist(rank, world, rank, world, "gloo"))
    result = evaluate(t, data.test)
    if rank == 0:
        torch.save({"loss": result.loss, "acc": result.acc, "confusion": result.confusion, "n": result.samples}, out)
    # Both ranks done before either tears down: a rank whose peer has already left its file store
    # can abort in gloo's teardown (seen once in a full suite: SIGABRT, "terminate called without
    # an active exception").
    dist.barrier()
    dist.destroy_process_group()


def test_sharded_evaluation_counts_every_sample_once(tmp_path: Path) -> None:
    from harness.config import TrainConfig
    from harness.data import load_data
    from harness.train import build_trainer, evaluate

    config = TrainConfig(model="lenet_relu", dataset="digits", epochs=1, batch_size=16, eval_batch_size=50, seed=1)
    data = load_data(config)
    assert len(data.test) % 2 == 1, "the point is a split that 2 ranks cannot share evenly"
    single = evaluate(build_trainer(config, data), data.test)
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(_evaluate_rank, args=(2, str(tmp_path / "store"), str(out)), nprocs=2)
    sharded = torch.load(out, weights_only=True)
    assert sharded["n"] == len(data.test)
    assert torch.equal(sharded["confusion"], single.confusion)
    assert sharded["acc"] == single.acc
    assert sharded["loss"] == pytest.approx(single.loss, rel=1e-6)


# ----------------------------------------------------------------- what the user can get wrong


def test_sync_batchnorm_on_cpu_processes_is_one_line() -> None:
    from harness.config import TrainConfig
    from harness.data import load_data
    from harness.distributed import Dist
    from harness.errors import HarnessError
    from harness.train import build_trainer

    config = TrainConfig(model="resnet18", dataset="digits", sync_batchnorm=True, device="cpu")
    with pytest.raises(HarnessError, match="sync_batchnorm=true needs CUDA devices"):
        build_trainer(config, load_data(config), Dist(0, 2, 0, 2, "gloo"))



@pytest.mark.parametrize(("args", "expected"), [
    (["--nproc-per-node", "0"], "error: nproc_per_node must be at least 1"),
    (["--nproc-per-node", "two"], "error: nproc_per_node must be a number of processes or 'auto'"),
    (["--nproc-per-node", "3"], "batch_size 32 does not split evenly over 3 processes"),
    (["--nproc-per-node", "2", "--dist-backend", "nccl"], "nccl backend needs CUDA GPUs"),
    (["--nproc-per-node", "2", "--device", "cuda"], "more GPUs than this machine has (0)"),
    (["--nproc-per-node", "2", "--dist-backend", "mpi"], "Unknown distributed backend 'mpi'"),
    (["--nproc-per-node", "1", "--nnodes", "2"], "error: nnodes=2 needs rdzv_endpoint 'HOST:PORT'"),
    (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], "error: node_rank must be from 0 to 1"),
])
def test_bad_launch_options_are_one_line(workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                         expected: str) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from harness.cli import main

    sys.argv = ["harness", "run", "quickstart", *args]
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in one_error_line(err), err
    assert not (workdir / "mlflow.db").exists() or not children(f"sqlite:///{workdir}/mlflow.db")


def test_an_unreachable_rendezvous_endpoint_is_one_line_after_a_bounded_wait(tmp_path: Path) -> None:
    env = setup(tmp_path, "dp", ONE_VARIANT, epochs=1)
    start = time.monotonic()
    result = harness("run", "dp", "--nnodes", "2", "--node-rank", "1", "--nproc-per-node", "1", "--rdzv-endpoint",
                     f"127.0.0.1:{free_port()}", "--rdzv-timeout", "3", cwd=tmp_path, env=env, timeout=120)
    assert time.monotonic() - start < 60
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "did not meet at rdzv_endpoint 127.0.0.1:" in line and "within 3 s" in line, line
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


def test_nproc_per_node_under_torchrun_is_refused(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    sys.argv = ["harness", "run", "quickstart", "--nproc-per-node", "2"]
    with pytest.raises(SystemExit):
        main()
    assert "started by torchrun already" in one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------- harness tune --nproc-per-node 2


def test_tune_on_two_processes_runs_one_trial_per_trial_and_prunes_on_both_ranks(tmp_path: Path) -> None:
    import optuna

    copy_experiment(tmp_path)
    env = environment(tmp_path)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # Seed 0 with 3-epoch trials prunes trial 2 after epoch 2 (training is deterministic on this CPU).
    result = harness("tune", "quickstart", "--trials", "3", "--nproc-per-node", "2", "--set", "epochs=3",
                     "--storage", storage, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    study = optuna.load_study(study_name="quickstart-lenet_relu", storage=storage)
    assert len(study.trials) == 3  # not 6: rank 1 samples nothing
    runs = {r.data.tags["optuna.trial_number"]: r for r in children(env["MLFLOW_TRACKING_URI"])}
    assert sorted(runs) == ["0", "1", "2"]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [t.state for t in study.trials]
    for trial in study.trials:
        run = runs[str(trial.number)]
        assert run.data.params["world_size"] == "2"
        # Both ranks stopped where rank 0's pruner did (a rank training on would hang the group).
        epochs = [s for s, _ in history(env["MLFLOW_TRACKING_URI"], run.info.run_id, "train_loss")]
        assert epochs == list(range(1, trial.last_step + 1)), (trial.number, trial.state, epochs)
    assert result.stdout.count("trial 2 PRUNED") == 1
