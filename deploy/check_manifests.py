"""Checks of deploy/'s manifests that a schema cannot make (deploy/check.sh runs it).

kubernetes  FILE... : every document of the rendered chart against the Kubernetes JSON schemas of each version in
                      K8S_VERSIONS (strict: unknown fields refused), then the gateway's own rules: probes on /healthz
                      and /readyz, non-root and read-only root, the data plane's grace period covering its drain and
                      spend flush, the state volume at GATEWAY_STATE_DIR, selectors that select, Secret keys that
                      exist, and only environment variables the binaries read.
compose FILE        : the gateway services' variables are settings the binaries read, and their health checks probe
                      /healthz and /readyz.
env-file FILE PLANE : a systemd EnvironmentFile example names only the plane's settings.

Exits 1 with one line per problem.
"""

import os
import re
import sys

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_VERSIONS = ["1.30.0", "1.37.0"]
# Kinds the Kubernetes schemas do not carry (CRDs), checked here by hand instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# Variables that are not the gateway's settings but that it reads (the log filter).
OTHER_VARIABLES = {"RUST_LOG"}


def settings(plane):
    """The environment variables `PLANE serve` reads: the `env = "NAME"` of its clap settings."""
    with open(os.path.join(ROOT, plane, "src", "settings.rs"), encoding="utf-8") as source:
        return set(re.findall(r'env = "([A-Z0-9_]+)"', source.read())) | OTHER_VARIABLES


def plane_of(args):
    """Which binary a container or service runs, from its command."""
    for plane in ("control-plane", "data-plane"):
        if plane in args:
            return plane
    return None


def documents(paths):
    for path in paths:
        with open(path, encoding="utf-8") as stream:
            for document in yaml.safe_load_all(stream):
                if document:
                    yield path, document


def matches(selector, labels):
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def check_kubernetes(paths):
    problems = []
    docs = list(documents(paths))
    for path, doc in docs:
        name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS:
            problems += check_service_monitor(name, doc, docs)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{name}: invalid for Kubernetes {version}: {error.message} at "
                                f"{'/'.join(map(str, error.path))}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes "
                                f"{version} (a kind the chart should not produce, or one to add to CUSTOM_KINDS)")
    workloads = [(path, doc) for path, doc in docs if doc.get("kind") in ("Deployment", "StatefulSet")]
    secrets = {doc["metadata"]["name"]: set(doc.get("stringData", {})) | set(doc.get("data", {}))
               for _, doc in docs if doc.get("kind") == "Secret"}
    for path, doc in workloads:
        problems += check_workload(f"{path}: {doc['kind']}/{doc['metadata']['name']}", doc, secrets)
    for path, doc in docs:
        problems += check_references(path, doc, workloads)
    if not workloads:
        problems.append(f"{' '.join(paths)}: no workload rendered")
    return problems


def check_workload(name, doc, secrets):
    problems = []
    pod = doc["spec"]["template"]["spec"]
    security = pod.get("securityContext", {})
    for container in pod["containers"]:
        where = f"{name} container {container['name']}"
        plane = plane_of(container.get("args", []) + container.get("command", []))
        if plane is None:
            problems.append(f"{where}: runs neither control-plane nor data-plane")
            continue
        probes = {kind: container.get(kind, {}).get("httpGet", {}).get("path")
                  for kind in ("livenessProbe", "readinessProbe")}
        if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
            problems.append(f"{where}: liveness must probe /healthz and readiness /readyz, not {probes}")
        context = {**security, **container.get("securityContext", {})}
        if context.get("runAsNonRoot") is not True or context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: must run as non-root on a read-only root filesystem")
        env = {entry["name"]: entry for entry in container.get("env", [])}
        for variable in sorted(set(env) - settings(plane)):
            problems.append(f"{where}: {variable} is not a setting of `{plane} serve`")
        for variable, entry in env.items():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] in secrets and ref["key"] not in secrets[ref["name"]]:
                problems.append(f"{where}: {variable} reads key {ref['key']} that Secret {ref['name']} lacks")
        if plane == "data-plane":
            problems += check_data_plane(where, doc, pod, container, env)
    return problems


def check_data_plane(where, doc, pod, container, env):
    problems = []

    def setting(variable, default):
        return int(env.get(variable, {}).get("value", default))

    # The binaries' defaults (data-plane/src/settings.rs) when the chart does not set them.
    drain_ms = setting("GATEWAY_SHUTDOWN_DRAIN_MS", 15_000)
    flush_ms = setting("GATEWAY_SPEND_FLUSH_TIMEOUT_MS", 10_000)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace * 1000 < pre_stop_s * 1000 + drain_ms + flush_ms:
        problems.append(f"{where}: terminationGracePeriodSeconds {grace} < preStop {pre_stop_s} s + drain "
                        f"{drain_ms} ms + spend flush {flush_ms} ms")
    state_dir = env.get("GATEWAY_STATE_DIR", {}).get("value")
    mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
    if state_dir not in mounts:
        problems.append(f"{where}: GATEWAY_STATE_DIR ({state_dir}) is not on a volume: the spend spool would be lost")
    else:
        volume = mounts[state_dir]
        claims = [claim["metadata"]["name"] for claim in doc["spec"].get("volumeClaimTemplates", [])]
        if volume not in claims and volume not in [v["name"] for v in pod.get("volumes", [])]:
            problems.append(f"{where}: the state volume {volume} is neither a volume nor a claim template")
    return problems


def check_references(path, doc, workloads):
    """Selectors select a workload's pods; the autoscaler targets a rendered workload."""
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
    pods = [workload["spec"]["template"]["metadata"]["labels"] for _, workload in workloads]
    selector = None
    if kind == "Service":
        selector = doc["spec"].get("selector")
    elif kind in ("PodDisruptionBudget", "NetworkPolicy"):
        spec = doc["spec"]
        selector = (spec.get("selector") or spec.get("podSelector") or {}).get("matchLabels")
    elif kind == "HorizontalPodAutoscaler":
        target = doc["spec"]["scaleTargetRef"]
        if not any(w["kind"] == target["kind"] and w["metadata"]["name"] == target["name"] for _, w in workloads):
            return [f"{path}: {kind}/{name} targets {target['kind']}/{target['name']}, which is not rendered"]
        return []
    else:
        return []
    if not any(matches(selector, labels) for labels in pods):
        return [f"{path}: {kind}/{name} selects no workload's pods ({selector})"]
    return []


def check_service_monitor(name, doc, docs):
    spec = doc.get("spec", {})
    selector = spec.get("selector", {}).get("matchLabels")
    services = [d for _, d in docs if d.get("kind") == "Service" and matches(selector, d["metadata"].get("labels", {}))]
    # One Service: two (the headless one of a StatefulSet too) would scrape every pod twice.
    problems = [] if len(services) == 1 else [f"{name}: selects {len(services)} rendered Services, not one ({selector})"]
    ports = {port.get("name") for service in services for port in service["spec"]["ports"]}
    for endpoint in spec.get("endpoints", []):
        if endpoint.get("port") not in ports or endpoint.get("path") != "/metrics":
            problems.append(f"{name}: endpoint {endpoint} is not a named port of the selected Services with /metrics")
    if not spec.get("endpoints"):
        problems.append(f"{name}: no endpoints")
    return problems


def check_compose(path):
    problems = []
    with open(path, encoding="utf-8") as stream:
        compose = yaml.safe_load(stream)
    planes = 0
    for service_name, service in compose["services"].items():
        plane = plane_of(service.get("command", []))
        if plane is None:
            continue
        planes += 1
        where = f"{path}: service {service_name}"
        for variable in sorted(set(service.get("environment", {})) - settings(plane)):
            problems.append(f"{where}: {variable} is not a setting of `{plane} serve`")
        test = " ".join(service.get("healthcheck", {}).get("test", []))
        if "/healthz" not in test or "/readyz" not in test:
            problems.append(f"{where}: its health check must probe /healthz and /readyz")
    if planes < 4:
        problems.append(f"{path}: expected two control planes and two data planes, found {planes} gateway services")
    return problems


def check_env_file(path, plane):
    problems = []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                variable = line.split("=", 1)[0]
                if variable not in settings(plane):
                    problems.append(f"{path}:{number}: {variable} is not a setting of `{plane} serve`")
    return problems


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "kubernetes":
        problems = check_kubernetes(args)
    elif command == "compose":
        problems = check_compose(args[0])
    elif command == "env-file":
        problems = check_env_file(args[0], args[1])
    else:
        raise SystemExit(f"unknown command {command}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
