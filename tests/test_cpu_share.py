"""model_core.cpu_share: the worker's threads make room for what else keeps the CPUs busy."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from model_core import cpu_share
from model_core.cpu_share import THREADS_VARIABLE, CpuShare, allowed_cpus

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux_only
@pytest.mark.skipif(allowed_cpus() < 2, reason="needs two CPUs")
def test_a_process_keeping_a_core_busy_leaves_the_job_a_thread_fewer():
    share = CpuShare()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        assert share.threads() <= allowed_cpus() - 1
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.parametrize("others_busy, own_busy, threads", [(0.0, 4.0, 4), (1.0, 3.0, 3), (2.6, 0.0, 1), (9.0, 0.0, 1)])
def test_the_jobs_own_work_does_not_count_against_it(monkeypatch, others_busy, own_busy, threads):
    """Over one second, other processes kept `others_busy` CPUs busy and the worker `own_busy`."""
    ticks = os.sysconf("SC_CLK_TCK")
    samples = iter([cpu_share._Sample(10.0, 0, 0),
                    cpu_share._Sample(11.0, round((others_busy + own_busy) * ticks), round(own_busy * ticks))])
    monkeypatch.setattr(cpu_share, "_sample", lambda: next(samples))
    monkeypatch.setattr(cpu_share, "allowed_cpus", lambda: 4)
    assert CpuShare().threads() == threads


def test_the_next_job_follows_what_competed_with_the_last_one(monkeypatch):
    """Two CPUs busy elsewhere during a job, then a take written between jobs (Blender, while the
    worker waits): the next job makes room for the competition, not for the take."""
    ticks = os.sysconf("SC_CLK_TCK")
    samples = iter([cpu_share._Sample(0.0, 0, 0),  # the worker starts
                    cpu_share._Sample(1.0, 0, 0),  # job 1 starts: nothing ran
                    cpu_share._Sample(2.0, 3 * ticks, 1 * ticks),  # job 1 ends: 2 CPUs busy elsewhere
                    cpu_share._Sample(2.5, 3 * ticks + ticks // 2, 1 * ticks)])  # job 2 starts
    monkeypatch.setattr(cpu_share, "_sample", lambda: next(samples))
    monkeypatch.setattr(cpu_share, "allowed_cpus", lambda: 4)
    share = CpuShare()
    assert share.threads() == 4
    share.job_done()
    assert share.threads() == 2


def test_a_fixed_thread_count_wins_and_a_wrong_one_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(THREADS_VARIABLE, "3")
    assert CpuShare().threads() == 3
    monkeypatch.setenv(THREADS_VARIABLE, "many")
    with pytest.raises(ValueError, match="MEMORYTALKER_THREADS must be a whole number"):
        CpuShare().threads()
