"""Who may reach the party and what its site may do: the NetworkPolicy (peers' CIDRs to
the channel and site ports, the party's own pods to everything) and the site's
ServiceAccount, Role (RayJobs in its namespace only) and RoleBinding."""
from __future__ import annotations

from typing import Any

from fed.deploy.names import PART_OF, PARTY_LABEL, dns_label
from fed.deploy.plan import Plan
from fed.deploy.render_ray import DASHBOARD_PORT, meta


def network_policy(plan: Plan) -> dict[str, Any]:
    """Ingress to every pod of the party: from its own namespace; from the KubeRay
    operator to the Ray dashboard (RayJob status); from a peer's CIDR to the channel
    ports (one range) and the site port; from people's CIDRs to the site port."""
    peer_blocks = [{"ipBlock": {"cidr": c}} for p in plan.peers for c in p.cidrs]
    lo, hi = plan.channel_ports[0], plan.channel_ports[-1]
    channel_port: dict[str, Any] = {"protocol": "TCP", "port": lo}
    if hi > lo:
        channel_port["endPort"] = hi
    site_port = {"protocol": "TCP", "port": plan.values.site.container_port}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": plan.values.kuberay_namespace}}}
    rules: list[dict[str, Any]] = [
        {"from": [{"podSelector": {}}]},
        {"from": [operator], "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]},
    ]
    if peer_blocks:
        rules.append({"from": peer_blocks, "ports": [channel_port, site_port]})
    clients = [{"ipBlock": {"cidr": c}} for c in plan.values.site.client_cidrs]
    if clients:
        rules.append({"from": clients, "ports": [site_port]})
    selector = {"matchLabels": {**PART_OF, PARTY_LABEL: dns_label(plan.party)}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(plan, f"{plan.name}-ingress", "access"),
            "spec": {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": rules}}


def service_account(plan: Plan) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(plan, f"{plan.name}-site", "site")}


def role(plan: Plan) -> dict[str, Any]:
    """RayJobs in this namespace: what the Kubernetes runner creates, reads and deletes."""
    rules = [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
              "verbs": ["create", "get", "list", "watch", "delete"]},
             {"apiGroups": ["ray.io"], "resources": ["rayjobs/status"], "verbs": ["get"]}]
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": meta(plan, f"{plan.name}-site", "site"), "rules": rules}


def role_binding(plan: Plan) -> dict[str, Any]:
    name = f"{plan.name}-site"
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(plan, name, "site"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": plan.namespace}]}
