"""House rules for rendered Kubernetes manifests (kubectl kustomize output), beyond schema validation.

Usage: k8s-house-rules.py RENDERED.yaml...   Prints every violation and exits 1 if there is any.

Rules, for every container of every Deployment and StatefulSet:
- liveness and readiness probes, resources.requests (cpu and memory) and a memory limit;
- runAsNonRoot (pod or container), readOnlyRootFilesystem, allowPrivilegeEscalation false, capabilities
  drop ALL, a RuntimeDefault seccomp profile, and no mounted service account token;
- env values only reference ($(NAME)) variables defined earlier in the same list, since the kubelet expands
  nothing else and a patch can reorder the list.
And for the redline workloads:
- redline-tasks and redline-ratelimit use native gRPC probes on their gRPC port, `liveness` for liveness and
  startup, `readiness` for readiness;
- every redline pod exposes the admin port 9464 named `metrics` with prometheus.io annotations;
- the worker's terminationGracePeriodSeconds exceeds its shutdown grace (flag or env, default 30s);
- the redline image is not `:latest`, and Deployments roll with maxUnavailable 0.
"""

import re
import sys

import yaml

GRPC_SERVICES = {"redline-tasks": 50051, "redline-ratelimit": 50052}
REDLINE_APPS = {"redline-tasks", "redline-ratelimit", "redline-gateway", "redline-worker"}
WORKER_DEFAULT_GRACE = 30.0
METRICS_PORT = 9464


def parse_duration(text):
    """Seconds in a redline duration: `30s`, `500ms`, `2m`, `1h`, `1d` or a plain number of seconds."""
    text = str(text).strip()
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[m.group(2)]
    return float(m.group(1)) * factor


def flag_value(args, flag):
    """The value of `--flag VALUE` or `--flag=VALUE` in a list of arguments, or None."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def env_value(container, name):
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value")
    return None


def check_container(where, pod, c, problems):
    def bad(msg):
        problems.append(f"{where} container {c.get('name')}: {msg}")

    for probe in ("livenessProbe", "readinessProbe"):
        if not c.get(probe):
            bad(f"no {probe}")
    res = c.get("resources") or {}
    requests = res.get("requests") or {}
    for r in ("cpu", "memory"):
        if r not in requests:
            bad(f"no resources.requests.{r}")
    if "memory" not in (res.get("limits") or {}):
        bad("no memory limit")
    psc = pod.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
        bad("runAsNonRoot is not true")
    user = csc.get("runAsUser", psc.get("runAsUser"))
    if not isinstance(user, int) or user == 0:
        bad("no numeric non-zero runAsUser")
    if csc.get("readOnlyRootFilesystem") is not True:
        bad("readOnlyRootFilesystem is not true")
    if csc.get("allowPrivilegeEscalation") is not False:
        bad("allowPrivilegeEscalation is not false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        bad("capabilities do not drop ALL")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        bad("seccompProfile is not RuntimeDefault")
    defined = set()
    for e in c.get("env") or []:
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
            if ref not in defined:
                bad(f"env {e.get('name')} references $({ref}), which is not defined before it")
        defined.add(e.get("name"))


def check_redline(where, app, spec, pod, c, problems):
    def bad(msg):
        problems.append(f"{where} container {c.get('name')}: {msg}")

    image = c.get("image", "")
    if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
        bad(f"image {image!r} is not pinned to a tag (set one with `images:` in the overlay)")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    if ports.get("metrics") != METRICS_PORT:
        bad(f"no container port {METRICS_PORT} named metrics")
    listen = flag_value(c.get("args") or [], "--metrics-listen") or env_value(c, "REDLINE_METRICS_LISTEN")
    if not listen or not str(listen).endswith(f":{METRICS_PORT}"):
        bad(f"--metrics-listen (or REDLINE_METRICS_LISTEN) does not listen on port {METRICS_PORT}")
    annotations = (spec["template"].get("metadata") or {}).get("annotations") or {}
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != str(
        METRICS_PORT
    ):
        bad("pod lacks prometheus.io/scrape and prometheus.io/port annotations")
    if app in GRPC_SERVICES:
        port = GRPC_SERVICES[app]
        for probe, service in (
            ("livenessProbe", "liveness"),
            ("readinessProbe", "readiness"),
            ("startupProbe", "liveness"),
        ):
            grpc = (c.get(probe) or {}).get("grpc")
            if not grpc:
                bad(f"{probe} is not a gRPC probe")
            elif grpc.get("port") != port or grpc.get("service") != service:
                bad(f"{probe} must be grpc {{port: {port}, service: {service}}}, is {grpc}")
    if app == "redline-worker":
        args = c.get("args") or []
        raw = flag_value(args, "--shutdown-grace") or env_value(c, "REDLINE_WORKER_SHUTDOWN_GRACE")
        grace = parse_duration(raw) if raw else WORKER_DEFAULT_GRACE
        period = pod.get("terminationGracePeriodSeconds", 30)
        if not period > grace:
            bad(f"terminationGracePeriodSeconds {period} must exceed the shutdown grace {grace:g}s")
    strategy = spec.get("strategy") or {}
    if (strategy.get("rollingUpdate") or {}).get("maxUnavailable") != 0:
        bad("Deployment rollingUpdate.maxUnavailable is not 0")


def check(docs, source):
    problems = []
    for d in docs:
        if not isinstance(d, dict) or d.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        name = d["metadata"]["name"]
        where = f"{source}: {d['kind']}/{name}"
        spec = d["spec"]
        pod = spec["template"]["spec"]
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        app = (spec["template"].get("metadata") or {}).get("labels", {}).get("app.kubernetes.io/name")
        if set(spec["selector"].get("matchLabels") or {}) != {"app.kubernetes.io/name"}:
            problems.append(f"{where}: the selector must be app.kubernetes.io/name alone")
        for c in pod.get("containers") or []:
            check_container(where, pod, c, problems)
            if app in REDLINE_APPS:
                check_redline(where, app, spec, pod, c, problems)
    return problems


def main(paths):
    problems = []
    workloads = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        workloads += sum(1 for d in docs if d.get("kind") in ("Deployment", "StatefulSet"))
        problems += check(docs, path)
    for p in problems:
        print(f"house rule: {p}")
    if problems:
        return 1
    print(f"house rules: {workloads} workloads in {len(paths)} file(s) ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
