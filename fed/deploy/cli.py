"""``fed deploy render``: one party's manifests for Kubernetes (docs/kubernetes.md).

Only argparse at import; the work is imported when the command runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fed.errors import FedConfigError


def _render(args: argparse.Namespace) -> int:
    from fed.deploy.plan import make_plan
    from fed.deploy.render import render, write
    from fed.deploy.validate import validate_all
    from fed.deploy.values import load_values
    from fed.site.config import load_federation

    try:
        values = load_values(Path(args.values) if args.values else None)
        plan = make_plan(args.party, load_federation(Path(args.federation)), values, args.values or "values")
        docs = render(plan)
        validate_all(docs)  # nothing is written unless every document is valid
    except FedConfigError as exc:
        print(f"fed deploy render: error: {exc}", file=sys.stderr)
        return 1
    paths = write(docs, Path(args.out))
    print(f"wrote {len(docs)} manifests for party {plan.party} (namespace {plan.namespace}) to {args.out}")
    print(f"apply: kubectl apply -k {args.out}")
    if plan.tls_files is not None:
        print(f"note: {paths[[d['kind'] for d in docs].index('Secret')]} holds the party's private key")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    deploy = subparsers.add_parser(
        "deploy", help="render a party's Kubernetes manifests (KubeRay)",
        description="Render the manifests that run one party on Kubernetes: a KubeRay RayCluster, "
                    "its channel, the site, the TLS Secret, the peers and the NetworkPolicy.")
    sub = deploy.add_subparsers(dest="deploy_command", required=True, metavar="COMMAND")
    p = sub.add_parser("render", help="write the party's manifests (validated) as a Kustomize base")
    p.add_argument("--party", required=True, help="the party to render (a party of the federation)")
    p.add_argument("--federation", required=True, metavar="FILE", help="federation.yaml (with the channels)")
    p.add_argument("--values", metavar="FILE", help="values.yaml: namespace, image, services, database, tls, peers")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="directory to write (a Kustomize base)")
    p.set_defaults(handler=_render)
