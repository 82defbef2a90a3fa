"""deploy/k8s: the kustomizations render and every object validates, offline, against the Kubernetes
schemas that kubernetes-validate ships (strict: an unknown field is an error); the pieces refer to each
other correctly (selectors, ports, probes, the gateways' Triton list); the GPU overlay's init step turns
the real model configs to KIND_GPU.

No kubectl or kustomize binary here: ``render`` is a small loader for what these kustomizations use
(resources, labels, images, strategic-merge patches by kind and name, lists of named items merged by name).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import need

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
VERSION = "1.30.0"  # the oldest Kubernetes these manifests claim (gRPC probes are GA since 1.27)

try:
    import kubernetes_validate
except ImportError:  # requirements/test.txt installs it; skip elsewhere, fail under CI=true
    kubernetes_validate = None


@pytest.fixture(autouse=True)
def _validator():
    need(kubernetes_validate is not None, "kubernetes-validate is not installed (requirements/test.txt)")


def _merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        for key, value in patch.items():
            base[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return base
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i
                                                                  for i in base + patch):
        by_name = {i["name"]: i for i in base}
        for item in patch:
            if item["name"] in by_name:
                _merge(by_name[item["name"]], item)
            else:
                base.append(copy.deepcopy(item))
        return base
    return copy.deepcopy(patch)


def _pod_specs(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec")
    return [spec] if spec else []


def render(directory: Path) -> list[dict]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert k["kind"] == "Kustomization"
    unknown = set(k) - {"apiVersion", "kind", "labels", "resources", "images", "patches"}
    assert not unknown, f"the test's loader does not know {unknown}: extend it"
    docs: list[dict] = []
    for resource in k.get("resources", []):
        path = (directory / resource).resolve()
        docs += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for entry in k.get("patches", []):
        patch = yaml.safe_load((directory / entry["path"]).read_text())
        targets = [d for d in docs if d["kind"] == patch["kind"] and d["metadata"]["name"] == patch["metadata"]["name"]]
        assert len(targets) == 1, f"patch {entry['path']} matches {len(targets)} objects"
        _merge(targets[0], patch)
    for entry in k.get("labels", []):
        assert not entry.get("includeSelectors")
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for image in k.get("images", []):
        for d in docs:
            for spec in _pod_specs(d):
                for c in spec.get("containers", []) + spec.get("initContainers", []):
                    if c["image"] == image["name"]:
                        c["image"] = f"{image['newName']}:{image['newTag']}"
    return docs


def by_kind(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''}"
    return found if name is None else found[0]


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu"])
def test_manifests_validate_against_the_kubernetes_schemas(overlay):
    docs = render(K8S / overlay)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                         "StatefulSet", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, VERSION, strict=True)  # raises on any schema violation
    # a field the schema does not know is refused (the validation is not vacuous)
    broken = copy.deepcopy(by_kind(docs, "Deployment", "mobidem-gateway"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_pieces_refer_to_each_other():
    from mobidem import config

    docs = render(K8S / "base")
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    labels_of = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in workloads}
    for d in docs:
        selector = d["spec"].get("selector") if d["kind"] in ("Service", "PodDisruptionBudget") else None
        if selector is not None:
            wanted = selector.get("matchLabels", selector)
            assert any(wanted.items() <= pod.items() for pod in labels_of.values()), f"{d['kind']} selects nothing"
    hpa = by_kind(docs, "HorizontalPodAutoscaler", "mobidem-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] in labels_of

    # the gateway's settings, read by mobidem's own loader
    cm = by_kind(docs, "ConfigMap", "mobidem-gateway")
    gateway = by_kind(docs, "Deployment", "mobidem-gateway")
    pod = gateway["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["command"][-1] == f"{mount['mountPath']}/mobidem.yaml"

    def settings_from(tmp: Path):
        tmp.write_text(cm["data"]["mobidem.yaml"])
        return config.load(None, environ={"MOBIDEM_CONFIG": str(tmp)})

    s = settings_from(Path(tempfile.mkdtemp()) / "mobidem.yaml")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(s.listen.rsplit(":", 1)[1]) == ports["grpc"] and int(s.metrics_listen.rsplit(":", 1)[1]) == ports["metrics"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" and container["startupProbe"]["grpc"]["port"] == ports["grpc"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] > s.shutdown_grace_s
    assert s.grpc_max_connection_age_s > 0 and s.grpc_max_connection_age_grace_s > 0
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])

    # one triton_url per Triton replica, by the StatefulSet's stable names under its headless Service
    triton = by_kind(docs, "StatefulSet", "triton")
    service = by_kind(docs, "Service", triton["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    grpc_port = next(p["containerPort"] for p in triton["spec"]["template"]["spec"]["containers"][0]["ports"]
                     if p["name"] == "grpc")
    assert s.triton_urls == [f"triton-{i}.{service['metadata']['name']}:{grpc_port}"
                             for i in range(triton["spec"]["replicas"])]
    env = {e["name"]: e for e in container["env"]}
    assert env["MOBIDEM_GALLERY_URL"]["valueFrom"]["secretKeyRef"]["name"] == "mobidem-gallery"
    assert all("value" not in e for e in env.values()), "secrets come from Secrets, not literals"


def test_gpu_overlay_runs_every_model_on_the_gpu(model_repository, tmp_path):
    """The GPU overlay asks for a GPU per Triton replica and its init step, run here on copies of the real
    model configs, leaves every model KIND_GPU."""
    triton = by_kind(render(K8S / "overlays/gpu"), "StatefulSet", "triton")
    spec = triton["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["containers"][0]["resources"]["requests"]["cpu"] == "2"  # the base's, kept by the merge
    init = spec["initContainers"][0]
    kind = next(e["value"] for e in init["env"] if e["name"] == "INSTANCE_KIND")
    assert kind == "KIND_GPU"
    script = init["command"][-1].replace("mobidem models build --repository /models --include-plugins", "true")
    repo = tmp_path / "models"
    for config in model_repository.glob("*/config.pbtxt"):
        (repo / config.parent.name).mkdir(parents=True)
        shutil.copy(config, repo / config.parent.name / "config.pbtxt")
    assert len(list(repo.glob("*/config.pbtxt"))) >= 4
    subprocess.run(["sh", "-c", script.replace("/models", str(repo))], env={"INSTANCE_KIND": kind, "PATH": "/usr/bin:/bin"},
                   check=True)
    for config in repo.glob("*/config.pbtxt"):
        text = config.read_text()
        assert "KIND_GPU" in text and "KIND_CPU" not in text, config
    base = by_kind(render(K8S / "base"), "StatefulSet", "triton")
    assert "nvidia.com/gpu" not in base["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})


def test_servicemonitor_selects_the_metrics_services():
    monitor = yaml.safe_load((K8S / "extras" / "servicemonitor.yaml").read_text())
    names = set(monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    services = [d for d in render(K8S / "base") if d["kind"] == "Service"
                and any(p["name"] == monitor["spec"]["endpoints"][0]["port"] for p in d["spec"]["ports"])]
    assert names == {s["metadata"]["labels"]["app.kubernetes.io/name"] for s in services}
