"""One party on Kubernetes: render, check and validate the manifests that run a party's
Ray cluster (a KubeRay ``RayCluster``), its channel, its site and their access rules.

``fed deploy render`` (:mod:`fed.deploy.cli`) reads the federation file and the party's
values (:mod:`fed.deploy.values`), builds the documents (:mod:`fed.deploy.render`),
validates each one offline (:mod:`fed.deploy.validate`) and only then writes them.
See docs/kubernetes.md.
"""
