"""`python -m model_core animate --ray`: batch animation on a Ray cluster (issue 21's scale-out). A
local cluster of a head and two worker nodes on loopback loses one worker node mid-run; every line
still comes out once, bit for bit what a single-machine run writes."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from model_core.cli import main
from tests.test_cli_safety import REPO, write_speech

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="needs Ray: pip install 'memorytalker[ray]'")
RAY = Path(sys.executable).with_name("ray")  # the `ray` command of this environment


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as where it is not installed
    line = write_speech(tmp_path / "line.wav")
    assert main(["animate", str(line), "--out", str(tmp_path / "line.npy"), "--ray", "127.0.0.1:6379"]) == 2
    assert "pip install 'memorytalker[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "line.npy").exists()


def test_a_bare_ray_option_before_the_inputs_is_refused_rather_than_taking_an_input_for_an_address(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["animate", "--ray", "a.wav", "b.wav", "--out", "out"])
    assert stop.value.code == 2 and "'a.wav' is not a Ray cluster address" in capsys.readouterr().err


def test_ray_sizes_need_ray(tmp_path, capsys):
    assert main(["animate", "a.wav", "--out", str(tmp_path / "a.npy"), "--ray-workers", "2"]) == 2
    assert "add --ray" in capsys.readouterr().err


def _process_tree() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    return children


def _descendants(pid: int) -> list[int]:
    tree, found, todo = _process_tree(), [], [pid]
    while todo:
        children = tree.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def _kill_node(node: subprocess.Popen) -> None:
    """Kills a node at once, as when its machine goes: `ray start` and every process under it (Ray
    puts its workers in process groups of their own)."""
    for pid in [*_descendants(node.pid), node.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.wait()


def _busy_node(nodes: list[subprocess.Popen]) -> subprocess.Popen | None:
    """The worker node one of whose workers is animating a line now (Ray titles a busy actor's process
    ray::CLASS.METHOD)."""
    for node in nodes:
        for pid in _descendants(node.pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::LineAnimator.animate"):
                    return node
    return None


@dataclass
class Cluster:
    address: str
    workers: list[subprocess.Popen]
    logs: Path
    env: dict[str, str]  # for the nodes and the drivers alike

    def check_workers_alive(self) -> None:
        for n, node in enumerate(self.workers, 1):
            assert node.poll() is None, (self.logs / f"worker{n}.log").read_text()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head (no CPUs: it runs no workers) and two one-CPU worker nodes, each `ray start --block` in
    a session of its own on loopback, with a temp folder and port of their own: other clusters on the
    machine are left alone. Torn down whatever happens; the nodes' logs are kept with pytest's
    temporary files."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Short: Ray's socket paths under it must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="mtray-"))
    logs = tmp_path_factory.mktemp("ray-logs")
    # A loopback test cluster needs no tokens. The head gives up on a lost node after about 2 s
    # instead of Ray's 15 or more, so that no new worker is placed there meanwhile. Ray refuses to
    # create objects once the disk is 95 % full, and a shared test machine's disk can be (a run here
    # then hung recovering the lost node's results): this test is about losing a node, not the disk.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_health_check_period_ms": "500",
           "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "4",
           "RAY_local_fs_capacity_threshold": "0.999"}
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    nodes: list[subprocess.Popen] = []

    def start(name: str, *options: str) -> subprocess.Popen:
        """Starts a node and waits for it: nodes started together on one machine can pick the same
        free port, and one of them fails."""
        log = logs / f"{name}.log"
        with open(log, "w") as output:
            nodes.append(subprocess.Popen([str(RAY), "start", *common, *options], stdout=output,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True))
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert nodes[-1].poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        return nodes[-1]

    try:
        start("head", "--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={temp / 'ray'}",
              "--include-dashboard=false")
        workers = [start(f"worker{n}", f"--address=127.0.0.1:{port}", "--num-cpus=1") for n in (1, 2)]
        yield Cluster(f"127.0.0.1:{port}", workers, logs, env)
    finally:
        for node in reversed(nodes):
            if node.poll() is None:
                _kill_node(node)
        if (temp / "ray" / "session_latest" / "logs").is_dir():
            shutil.copytree(temp / "ray" / "session_latest" / "logs", logs / "session", dirs_exist_ok=True,
                            ignore_dangling_symlinks=True)
        shutil.rmtree(temp, ignore_errors=True)


@needs_ray
def test_a_cluster_that_loses_a_worker_node_mid_run_still_writes_every_line_once_bit_for_bit(tmp_path, ray_cluster):
    # The bundled demo model on 3-5 s lines: about 0.1 s a line, so the run lasts long enough to lose a node in.
    lines = [write_speech(tmp_path / "lines" / f"line{k:02d}.wav", seconds=3 + k % 5 / 2, seed=k) for k in range(40)]
    # The reference: a single-machine run with one thread, as each one-CPU Ray worker computes (the
    # thread count changes the last bits of the motion).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["animate", *map(str, lines), "--out", str(tmp_path / "reference")]) == 0
    finally:
        torch.set_num_threads(threads)
    out, report, log = tmp_path / "out", tmp_path / "report.jsonl", tmp_path / "run.log"
    with open(log, "w") as run_log:
        run = subprocess.Popen([sys.executable, "-m", "model_core", "animate", *map(str, lines), "--out", str(out),
                                "--report", str(report), "--ray", ray_cluster.address, "--ray-workers", "2"],
                               cwd=REPO, stdout=run_log, stderr=subprocess.STDOUT, env=ray_cluster.env)
    try:
        deadline = time.monotonic() + 150
        victim = None
        while victim is None:
            ray_cluster.check_workers_alive()
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()
            if len(list(out.glob("*.npy"))) >= 4:
                victim = _busy_node(ray_cluster.workers)
            time.sleep(0.01)
        _kill_node(victim)
        assert run.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, log.read_text()
    finally:
        run.kill()
    summary = log.read_text()
    assert victim.poll() is not None and "40 animated, 0 skipped, 0 failed" in summary, summary
    retried = int(re.search(r"(\d+) retried", summary).group(1))
    assert retried >= 1, summary  # the lost node's lines were done again elsewhere
    # Every line exactly once, complete (no partial files left), and the same bytes.
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{line.stem}.npy" for line in lines)
    assert all((out / line.with_suffix(".npy").name).read_bytes() ==
               (tmp_path / "reference" / line.with_suffix(".npy").name).read_bytes() for line in lines)
    rows = [json.loads(row) for row in report.read_text().splitlines()]
    assert sorted(row["input"] for row in rows) == sorted(map(str, lines))
    assert all(row["frames"] > 0 and "error" not in row for row in rows)


def _rows(report: Path) -> dict[str, dict]:
    """The report's rows by input, less the seconds (timings differ from run to run)."""
    rows = [json.loads(row) for row in report.read_text().splitlines()]
    return {row["input"]: {key: value for key, value in row.items() if key != "seconds"} for row in rows}


@needs_ray
def test_a_ray_run_keeps_to_its_shard_resumes_and_reports_a_bad_line_as_a_single_machine_run_does(tmp_path,
                                                                                                    ray_cluster):
    # Runs after the node loss above: the one worker node left is enough.
    lines = [write_speech(tmp_path / "lines" / f"line{k}.wav", seconds=1, seed=k) for k in range(6)]
    bad = tmp_path / "lines" / "bad.wav"  # first in path order: in shard 1/2, with line1, line3 and line5
    bad.write_bytes(b"not audio" * 10)
    inputs = [*map(str, lines), str(bad)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one-CPU workers compute
    try:
        assert main(["animate", *inputs, "--out", str(tmp_path / "reference"), "--shard", "1/2",
                     "--report", str(tmp_path / "reference.jsonl")]) == 1
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "out"
    out.mkdir()
    (out / "line1.npy").write_bytes((tmp_path / "reference" / "line1.npy").read_bytes())  # done before: resumed
    done_before = (out / "line1.npy").stat().st_mtime_ns
    run = subprocess.run([sys.executable, "-m", "model_core", "animate", *inputs, "--out", str(out), "--shard", "1/2",
                          "--resume", "--report", str(tmp_path / "ray.jsonl"), "--ray", ray_cluster.address],
                         cwd=REPO, capture_output=True, text=True, timeout=150, env=ray_cluster.env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 animated, 1 skipped, 1 failed, 0 retried" in run.stdout and "1 of 4 inputs failed" in run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["line1.npy", "line3.npy", "line5.npy"]
    assert (out / "line1.npy").stat().st_mtime_ns == done_before
    assert all((out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
               for name in ("line3.npy", "line5.npy"))
    reference, rows = _rows(tmp_path / "reference.jsonl"), _rows(tmp_path / "ray.jsonl")
    assert rows[str(lines[1])] == {"input": str(lines[1]), "output": str(out / "line1.npy"), "skipped": "output exists"}
    assert rows[str(bad)]["error"] == reference[str(bad)]["error"]
    assert all(rows[str(lines[k])]["frames"] == reference[str(lines[k])]["frames"] for k in (3, 5))
