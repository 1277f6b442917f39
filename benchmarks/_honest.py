"""The honest side of benchmarks/hostile_peer.py: alice and bob run small rounds.

Each party process runs `party_main`: its own Ray cluster, `fed.init` with TLS and a
small receive budget, then rounds until the parent asks to stop. A round crosses the
victim's (bob's) receiver twice and alice's once, and every party checks its result.
The stop decision is alice's, passed through the job itself, so both parties run the
same number of rounds (the multi-controller rule).
"""
from __future__ import annotations

import os
import time
import traceback
from typing import Any

import ray
from _harness import MiB, post

import fed


@fed.remote
def produce(i: int) -> list:
    return [i, "x" * 64]


@fed.remote
def double(x: list) -> list:
    return [2 * x[0], x[1]]


@fed.remote
def check(i: int, x: list, y: list, stop: bool) -> tuple[bool, bool]:
    """(whether the round's values are right, whether the parties stop after it)."""
    return x[0] == i and y[0] == 2 * i and y[1] == x[1], stop


def _stop_requested(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, "stop"))


def _round(i: int, run_dir: str, timeout_s: float) -> tuple[bool, bool]:
    x = produce.party("alice").remote(i)
    y = double.party("bob").remote(x)  # alice -> bob: into the victim's receiver
    out = check.party("alice").remote(i, x, y, _stop_requested(run_dir))  # bob -> alice
    return fed.get(out, timeout=timeout_s)  # alice -> bob and alice -> mallory


def _rounds(party: str, run_dir: str, params: dict) -> dict[str, Any]:
    done, wrong = 0, 0
    stop = False
    while not stop:
        ok, stop = _round(done, run_dir, params["round_timeout_s"])
        done += 1
        wrong += 0 if ok else 1
        post(run_dir, f"{party}.rounds", f"{done} {wrong}")
        time.sleep(params["pause_s"])
    return {"rounds": done, "wrong": wrong}


def party_main(party: str, book: dict, pki: str, run_dir: str, params: dict) -> dict[str, Any]:
    """One honest party: `book` lists alice, bob and mallory (the hostile party); `pki`
    is a `fed certs` directory holding every party's certificate."""
    from fed.cli.certs import tls_config_for

    tls = tls_config_for(pki, party)
    ray.init(address="local", num_cpus=1, object_store_memory=256 * MiB,
             include_dashboard=False, log_to_driver=False)
    fed.init(addresses=book, party=party, tls_config=tls, job_name=params["job"],
             logging_level="error", config={"cross_silo_comm": params["comm"]})
    post(run_dir, f"{party}.ready")
    try:
        result = _rounds(party, run_dir, params)
    except Exception as exc:  # the parent reports it as a failed honest round
        post(run_dir, f"{party}.error", "".join(traceback.format_exception(exc))[-4000:])
        raise
    finally:
        fed.shutdown()
        ray.shutdown()
    return result
