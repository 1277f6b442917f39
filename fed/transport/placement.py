"""Where a party's receiver actor runs when the party's Ray cluster has several nodes.

The receiver must listen on the party's listen address, so it must run on the node
that owns that address: the node whose IP is the listen host, else the driver's node
(wildcard, loopback or host-name addresses, and single-node clusters). The placement is
hard (``soft=False``): on another node the bind would fail or listen on the wrong host.
``recv_resource_label`` (RayFed's way to choose the node) takes precedence.
"""
from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fed.errors import FedError


@dataclass(frozen=True)
class ReceiverPlacement:
    """The scheduling strategy for the receiver, and whether that is the driver's node."""

    strategy: NodeAffinitySchedulingStrategy | None
    node_id: str | None
    on_driver_node: bool

    def run(self, probe: Callable[..., None], *args: Any) -> None:
        """Run `probe(*args)` (a listen check) on the receiver's node; skipped when a
        resource label, not this module, chooses the node."""
        if self.on_driver_node:
            probe(*args)
        elif self.strategy is not None:
            task = ray.remote(probe).options(num_cpus=0, scheduling_strategy=self.strategy)
            try:
                ray.get(task.remote(*args))
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, FedError):
                    raise exc.cause from None
                raise


def _host_ips(host: str) -> set[str]:
    """The IP addresses `host` stands for (itself when it is one)."""
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        return {host}


def receiver_placement(listen_host: str, resource_label: dict | None) -> ReceiverPlacement:
    """Place the receiver on the node owning `listen_host` (see the module docstring)."""
    if resource_label:
        return ReceiverPlacement(None, None, on_driver_node=False)
    driver = ray.get_runtime_context().get_node_id()
    ips = _host_ips(listen_host)
    alive = [n for n in ray.nodes() if n.get("Alive")]
    owners = [n["NodeID"] for n in alive if n.get("NodeManagerAddress") in ips]
    node = driver if (driver in owners or not owners) else owners[0]
    return ReceiverPlacement(
        NodeAffinitySchedulingStrategy(node, soft=False), node, on_driver_node=node == driver
    )
