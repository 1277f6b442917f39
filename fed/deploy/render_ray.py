"""The party's Ray cluster as a KubeRay ``RayCluster`` (head + one autoscaling worker
group, Ray pinned to the installed version) and the Service that exposes its channel."""
from __future__ import annotations

from typing import Any

from fed.deploy.names import TLS_MOUNT, party_labels, ray_version
from fed.deploy.plan import Plan
from fed.deploy.values import Resources, ServiceValues

#: Ray's own head ports (GCS, dashboard, client), as in KubeRay's samples.
DASHBOARD_PORT = 8265
HEAD_PORTS = (("gcs", 6379), ("dashboard", DASHBOARD_PORT), ("client", 10001))


def meta(plan: Plan, name: str, component: str, **extra: Any) -> dict[str, Any]:
    """``metadata`` of one object: its name, the party's namespace and labels."""
    return {"name": name, "namespace": plan.namespace, "labels": party_labels(plan.party, component), **extra}


def channel_port_name(port: int) -> str:
    return f"ch-{port}"


def _container(plan: Plan, name: str, res: Resources, ports: list[tuple[str, int]]) -> dict[str, Any]:
    amounts = {"cpu": res.cpu, "memory": res.memory}
    container: dict[str, Any] = {"name": name, "image": plan.values.image,
                                 "imagePullPolicy": plan.values.image_pull_policy}
    if ports:
        container["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports]
    container["resources"] = {"requests": dict(amounts), "limits": dict(amounts)}
    container["volumeMounts"] = [{"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}]
    return container


def _pod(plan: Plan, container: dict[str, Any], node_type: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": party_labels(plan.party, f"ray-{node_type}")},
        "spec": {"containers": [container],
                 "volumes": [{"name": "tls", "secret": {"secretName": plan.tls_secret, "defaultMode": 0o444}}]},
    }


def ray_cluster(plan: Plan) -> dict[str, Any]:
    """The RayCluster: the channel's ports are open on the head, where the Service sends them."""
    ray = plan.values.ray
    head_ports = list(HEAD_PORTS) + [(channel_port_name(p), p) for p in plan.channel_ports]
    workers = ray.workers
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": meta(plan, plan.name, "ray"),
        "spec": {
            "rayVersion": ray_version(),
            "enableInTreeAutoscaling": True,
            "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 60},
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0"},
                "template": _pod(plan, _container(plan, "ray-head", ray.head, head_ports), "head"),
            },
            "workerGroupSpecs": [{
                "groupName": "workers",
                "replicas": workers.min_replicas,
                "minReplicas": workers.min_replicas,
                "maxReplicas": workers.max_replicas,
                "rayStartParams": {},
                "template": _pod(plan, _container(plan, "ray-worker", workers, []), "worker"),
            }],
        },
    }


def exposed_service(plan: Plan, name: str, component: str, service: ServiceValues,
                    selector: dict[str, str], ports: list[tuple[str, int, int]]) -> dict[str, Any]:
    """A Service of the type the values choose. Outside traffic keeps its source address
    (``externalTrafficPolicy: Local``) so the NetworkPolicy can admit only the peers; a
    NodePort is the federation's own port, so peers dial what federation.yaml says."""
    spec: dict[str, Any] = {"type": service.type, "selector": selector, "ports": []}
    for port_name, port, target in ports:
        entry = {"name": port_name, "port": port, "targetPort": target, "protocol": "TCP"}
        if service.type == "NodePort":
            entry["nodePort"] = port
        spec["ports"].append(entry)
    if service.type != "ClusterIP":
        spec["externalTrafficPolicy"] = "Local"
    if service.type == "LoadBalancer":
        spec["loadBalancerSourceRanges"] = sorted({c for p in plan.peers for c in p.cidrs}
                                                  | set(_extra_sources(plan, component)))
    extra = {"annotations": dict(service.annotations)} if service.annotations else {}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(plan, name, component, **extra), "spec": spec}


def _extra_sources(plan: Plan, component: str) -> list[str]:
    return list(plan.values.site.client_cidrs) if component == "site" else []


def channel_service(plan: Plan) -> dict[str, Any]:
    """The channel's ports on the head, as plain TCP: TLS passes through to the receiver."""
    selector = {"ray.io/cluster": plan.name, "ray.io/node-type": "head"}
    ports = [(channel_port_name(p), p, p) for p in plan.channel_ports]
    return exposed_service(plan, f"{plan.name}-channel", "channel", plan.values.channel, selector, ports)
