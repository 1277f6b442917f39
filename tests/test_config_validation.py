"""`fed.init`'s configuration is typed strictly: a wrong type is a FedConfigError naming
the key, the value given and the type expected, never a truthy string or a rounded float.
In-process, no Ray cluster."""
from __future__ import annotations

import dataclasses
import re

import pytest

from fed.cli import UsageError
from fed.cli.certs import validate_parties
from fed.config import PARTY_NAME_RULE, CrossSiloCommConfig, build_config
from fed.errors import FedConfigError

ADDRESSES = {"alice": "127.0.0.1:1", "bob": "127.0.0.1:2"}


def init(config=None, addresses=None, party="alice"):
    return build_config(party=party, addresses=addresses or ADDRESSES, cluster=None,
                        config=config, tls_config=None, job_name="j", mode=None)


def comm(**keys):
    return init({"cross_silo_comm": keys}).comm


BOOLS = ["listen_all_interfaces", "expose_error_trace", "exit_on_sending_failure",
         "continue_waiting_for_data_sending_on_error", "use_global_proxy"]


@pytest.mark.parametrize("key", BOOLS)
@pytest.mark.parametrize("value", ["false", "False", "true", 0, 1, None])
def test_bool_keys_refuse_strings_and_numbers(key: str, value) -> None:
    if value is None and key == "use_global_proxy":
        return  # an accepted no-op key whose default is None
    with pytest.raises(FedConfigError) as info:
        comm(**{key: value})
    text = str(info.value)
    assert f"config['cross_silo_comm']['{key}'] = {value!r}" in text
    assert "expected a bool" in text


def test_string_false_does_not_bind_all_interfaces() -> None:
    with pytest.raises(FedConfigError, match="listen_all_interfaces"):
        init({"cross_silo_comm": {"listen_all_interfaces": "false"}})
    assert init({"cross_silo_comm": {"listen_all_interfaces": False}}).parties["alice"].listen.host == "127.0.0.1"
    assert init({"cross_silo_comm": {"listen_all_interfaces": True}}).parties["alice"].listen.host == "0.0.0.0"


BAD_NUMBERS = [
    ("connections_per_peer", 0.5, "expected an int"),
    ("connections_per_peer", 0, "expected a value >= 1"),
    ("connections_per_peer", "4", "expected an int"),
    ("connections_per_peer", True, "expected an int"),
    ("max_concurrency", 2.5, "expected an int"),
    ("max_concurrency", 0, "expected a value > 0"),
    ("shutdown_flush_timeout_s", "30", "expected a number"),
    ("shutdown_flush_timeout_s", -1, "expected a value >= 0"),
    ("timeout_in_ms", "60000", "expected a number"),
    ("timeout_in_ms", 0, "expected a value > 0"),
    ("peer_timeout_s", False, "expected a number"),
    ("startup_timeout_s", -5.0, "expected a value > 0"),
    ("chunk_size_in_bytes", 1.5e6, "expected an int"),
    ("messages_max_size_in_bytes", "1GB", "expected an int"),
    ("proxy_max_restarts", -1, "expected a value >= 0"),
    ("max_buffered_bytes_per_peer", 1.0, "expected an int"),
    ("max_header_bytes", 100, "expected a value >= 4096"),
    ("max_frames_per_value", 0, "expected a value > 0"),
]


@pytest.mark.parametrize("key, value, expected", BAD_NUMBERS)
def test_numeric_keys_are_checked(key: str, value, expected: str) -> None:
    with pytest.raises(FedConfigError) as info:
        comm(**{key: value})
    text = str(info.value)
    assert f"['{key}'] = {value!r} ({type(value).__name__})" in text and expected in text


def test_container_keys_are_checked() -> None:
    for key, value, expected in [
        ("recv_resource_label", {"gpu_node": "1"}, "['recv_resource_label']['gpu_node'] = '1'"),
        ("send_resource_label", ["a"], "expected a dict"),
        ("http_header", "x: y", "expected a dict"),
        ("grpc_channel_options", {"a": 1}, "expected a list"),
    ]:
        with pytest.raises(FedConfigError, match=re.escape(expected)):
            comm(**{key: value})
    with pytest.raises(FedConfigError, match=r"config\['cross_silo_comm'\] must be a dict"):
        init({"cross_silo_comm": ["timeout_in_ms", 1]})
    with pytest.raises(FedConfigError, match=r"config=\.\.\.\) must be a dict"):
        init([("cross_silo_comm", {})])
    with pytest.raises(FedConfigError, match=r"barrier_on_initializing'\] = 'yes' \(str\): expected a bool"):
        init({"barrier_on_initializing": "yes"})


def test_valid_values_keep_rayfed_meanings_and_every_error_is_listed() -> None:
    c = comm(timeout_in_ms=1500, messages_max_size_in_bytes=100, exit_on_sending_failure=True,
             expose_error_trace=True, max_concurrency=8, recv_resource_label={"n": 1},
             shutdown_flush_timeout_s=0, connections_per_peer=1, peer_timeout_s=2)
    assert (c.timeout_in_ms, c.messages_max_size_in_bytes, c.max_concurrency) == (1500, 100, 8)
    assert c.exit_on_sending_failure is True and c.expose_error_trace is True
    assert c.recv_resource_label == {"n": 1.0} and c.connections_per_peer == 1
    assert c.shutdown_flush_timeout_s == 0 and c.peer_timeout_s == 2
    defaults = CrossSiloCommConfig.from_dict(None)
    assert [f.name for f in dataclasses.fields(defaults)] == [f.name for f in dataclasses.fields(c)]
    assert defaults.listen_all_interfaces is False and defaults.connections_per_peer == 4
    with pytest.raises(FedConfigError) as info:
        comm(expose_error_trace="no", connections_per_peer=0.5)
    assert "expose_error_trace" in str(info.value) and "connections_per_peer" in str(info.value)


def test_typos_keep_the_did_you_mean() -> None:
    for keys, hint in [({"listen_all_interface": True}, "listen_all_interfaces"),
                       ({"timeout_ms": 5}, "timeout_in_ms"),
                       ({"conections_per_peer": 2}, "connections_per_peer")]:
        with pytest.raises(FedConfigError, match=f"Did you mean '{hint}'"):
            comm(**keys)


@pytest.mark.parametrize("name", ["alice", "hospital-a", "p.1", "B_2", "9lives", "x" * 63])
def test_party_names_valid_in_fed_init_are_valid_in_fed_certs_and_run(name: str) -> None:
    init(addresses={name: "127.0.0.1:1", "other": "127.0.0.1:2"}, party=name)
    assert validate_parties([name, "other"]) == [name, "other"]


@pytest.mark.parametrize("name", ["", "a/b", "a b", "-a", ".", "..", "x" * 64, "ä", "a:b"])
def test_party_names_invalid_everywhere(name: str) -> None:
    with pytest.raises(FedConfigError, match=re.escape(PARTY_NAME_RULE)):
        init(addresses={name: "127.0.0.1:1", "other": "127.0.0.1:2"}, party="other")
    with pytest.raises(UsageError):
        validate_parties([name, "other"])


def test_job_name_fits_the_hello_a_receiver_reads() -> None:
    """The job name travels in every HELLO, which receivers read up to 4 KiB only."""
    ok = build_config(party="alice", addresses=ADDRESSES, cluster=None, config=None,
                      tls_config=None, job_name="é" * 512, mode=None)
    assert len(ok.job_name) == 512
    with pytest.raises(FedConfigError, match="at most 512"):
        build_config(party="alice", addresses=ADDRESSES, cluster=None, config=None,
                     tls_config=None, job_name="j" * 513, mode=None)
