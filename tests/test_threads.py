"""The thread policy (continual_lm/threads.py): --threads, then $CONTINUAL_LM_THREADS, then $OMP_NUM_THREADS, else
the usable cores shared by the processes of this machine; OpenMP threads that sleep, set before torch loads."""
import os
import subprocess
import sys

import pytest
import torch

from continual_lm import threads
from continual_lm.config import RunConfig
from continual_lm.errors import ContinualLMError
from continual_lm.train.assemble import prepare_run
from continual_lm.train.run_record import identity

from helpers import ROOT, tiny_config

VARIABLES = ("CONTINUAL_LM_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    return monkeypatch


def test_the_option_wins_then_our_variable_then_openmps_then_the_usable_cores(clean_env):
    assert threads.resolve_threads() == (6, "default")  # the affinity mask's 6 cores
    clean_env.setenv("OMP_NUM_THREADS", "3,1")  # a count per nesting level: the first is torch's
    assert threads.resolve_threads() == (3, "$OMP_NUM_THREADS")
    clean_env.setenv("CONTINUAL_LM_THREADS", "2")
    assert threads.resolve_threads() == (2, "$CONTINUAL_LM_THREADS")
    assert threads.resolve_threads(5) == (5, "--threads")


def test_processes_launched_together_share_the_cores(clean_env):
    clean_env.setenv("LOCAL_WORLD_SIZE", "4")  # accelerate launch / torchrun: 4 processes on this machine
    assert threads.default_threads() == 1
    clean_env.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.resolve_threads() == (3, "default")
    clean_env.setattr(os, "sched_getaffinity", lambda pid: {7})
    assert threads.default_threads() == 1  # never 0


def test_bad_values_are_refused_with_their_name(clean_env):
    clean_env.setenv("CONTINUAL_LM_THREADS", "many")
    with pytest.raises(ContinualLMError, match=r"\$CONTINUAL_LM_THREADS must be a positive integer"):
        threads.resolve_threads()
    with pytest.raises(ContinualLMError, match="--threads must be a positive integer"):
        threads.resolve_threads(0)
    with pytest.raises(ContinualLMError, match="--threads must be a positive integer"):
        RunConfig.from_dict({"threads": 0})


def test_openmp_threads_sleep_unless_the_user_chose_how_they_wait():
    env = {}
    threads.set_openmp_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10000"}):
        env = dict(chosen)
        threads.set_openmp_defaults(env)
        assert env == chosen


def test_the_thread_count_is_how_a_run_runs_not_what_it_computes(tmp_path):
    """A resume on a machine with other cores is the same run (train/run_record.py RUNTIME)."""
    assert identity(tiny_config(tmp_path, threads=1)) == identity(tiny_config(tmp_path, threads=3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        prepare_run(tiny_config(tmp_path, threads=1))  # builds the run (writes nothing)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_command_line_sets_the_wait_policy_before_torch_loads():
    code = """
import os, sys
from continual_lm import cli, threads
assert "torch" not in sys.modules, "importing the CLI imported torch"
original = threads.set_openmp_defaults
def checked(*args, **kwargs):
    assert "torch" not in sys.modules, "torch was imported before the OpenMP defaults"
    original(*args, **kwargs)
threads.set_openmp_defaults = checked
cli.main(["list"])
import torch
print("RESULT", os.environ["OMP_WAIT_POLICY"], torch.get_num_threads())
"""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES + ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(PYTHONPATH=str(ROOT), CONTINUAL_LM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == "RESULT PASSIVE 1"
