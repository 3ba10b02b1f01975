#!/usr/bin/env python3
"""Tests of the Helm chart in charts/aerie.

Renders the chart offline with helm-python-sdk (Helm's Go SDK through ctypes,
no helm binary), lints it strictly, checks every rendered object against the
Kubernetes OpenAPI schemas with kubernetes-validate (strict: unknown fields
fail), checks the Prometheus Operator objects against a small hand-written
schema, and asserts what each set of values must produce.

Run: python tests/chart/test_chart.py   (tests/chart/run.sh installs the deps)
Ends with "N passed, M failed"; exits 1 when anything failed.
"""

import copy
import json
import os
import re
import sys
import time
import traceback

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "aerie")
RELEASE = "aerie"
NAMESPACE = "serving"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest bundled schema.
KUBE_VERSIONS = ["1.25.0", "1.37.0"]
RECOMMENDED_LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
]
ROLES = {  # component -> (values key, container port of the probes, probe port name)
    "router": ("router", 30000, "http"),
    "draft-worker": ("draftWorker", 32001, "metrics"),
    "target-worker": ("targetWorker", 31001, "metrics"),
}

# ---------------------------------------------------------------- value sets

GPU_VALUES = {
    "gpu": {
        "enabled": True,
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
    },
    "targetWorker": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}]},
}
TP2_VALUES = {"gpu": {"enabled": True}, "targetWorker": {"tensorParallelSize": 2, "shm": {"sizeLimit": "16Gi"}}}
EXTERNAL_ETCD = ["http://etcd-0.etcd.infra:2379", "http://etcd-1.etcd.infra:2379"]
EXTERNAL_VALUES = {"etcd": {"bundled": {"enabled": False}, "external": {"endpoints": EXTERNAL_ETCD}}}
MONITORING_VALUES = {
    "monitoring": {
        "serviceMonitor": {"enabled": True, "interval": "30s", "labels": {"release": "kube-prometheus"}},
        "podMonitor": {"enabled": True, "interval": "20s"},
    },
    "targetWorker": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 10,
            "metric": {"type": "Pods", "name": "aerie_target_waiting_requests", "averageValue": "3"},
        }
    },
}
COLOCATED_VALUES = {"colocated": {"enabled": True, "replicas": 2}}
COLOCATED_GPU_VALUES = {
    "gpu": GPU_VALUES["gpu"],
    "colocated": {"enabled": True},
    "monitoring": {"podMonitor": {"enabled": True}},
}
VALUE_SETS = {
    "defaults": {},
    "gpu": GPU_VALUES,
    "tp2": TP2_VALUES,
    "external-etcd": EXTERNAL_VALUES,
    "monitoring": MONITORING_VALUES,
    "colocated": COLOCATED_VALUES,
    "colocated-gpu": COLOCATED_GPU_VALUES,
}
# Value sets that use APIs newer than the oldest supported Kubernetes: they are
# validated from this version on (Dynamic Resource Allocation's resource.k8s.io/v1
# is GA in 1.34).
MIN_KUBE = {"colocated-gpu": "1.34.0"}

# ------------------------------------------------------------------ helpers

_chart = None
_cache = {}


def chart():
    global _chart
    if _chart is None:
        _chart = helm.Chart.load(CHART)
    return _chart


def render_raw(values):
    return chart().render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


def render(values):
    """The rendered objects (NOTES.txt and empty documents left out)."""
    key = json.dumps(values, sort_keys=True)
    if key not in _cache:
        docs = []
        for path, text in sorted(render_raw(values).items()):
            if not path.endswith((".yaml", ".yml")):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    docs.append(doc)
        _cache[key] = docs
    return _cache[key]


def render_fails(values, needle):
    try:
        render_raw(values)
    except helm.HelmError as e:
        assert needle in str(e), f"render failed, but without {needle!r}: {e}"
        return
    raise AssertionError(f"render accepted {values}, expected a failure mentioning {needle!r}")


def objs(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def get(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}; have {sorted(kinds_names(docs))}"
    return found[0]


def kinds_names(docs):
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def name_of(component):
    return f"{RELEASE}-{component}"


def deployment(docs, component):
    return get(docs, "Deployment", name_of(component))


def container(dep):
    cs = dep["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1, f"{dep['metadata']['name']}: expected one container"
    return cs[0]


def args_of(docs, component):
    return container(deployment(docs, component))["args"]


def flag(args, name):
    """The value after `name` in an argument list (None when absent); fails on repeats."""
    idx = [i for i, a in enumerate(args) if a == name]
    assert len(idx) <= 1, f"{name} given {len(idx)} times in {args}"
    if not idx:
        return None
    assert idx[0] + 1 < len(args), f"{name} has no value in {args}"
    return args[idx[0] + 1]


def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}


def port_number(c, port_name):
    for p in c.get("ports", []):
        if p["name"] == port_name:
            return p["containerPort"]
    raise AssertionError(f"container {c['name']} has no port named {port_name}")


def gpu_limit(c):
    return (c.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu")


def eq(actual, expected, what):
    assert actual == expected, f"{what}: expected {expected!r}, got {actual!r}"


def merged(*dicts):
    out = {}
    for d in dicts:
        _deep_merge(out, copy.deepcopy(d))
    return out


def _deep_merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


# ----------------------------------------- schemas for the CRD-based objects

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}
_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "namespace", "labels"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STR_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_NS_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port", "path"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
    },
}


def _monitor_schema(kind, endpoints_key):
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints_key],
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": _NS_SELECTOR,
                    endpoints_key: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                    "jobLabel": {"type": "string"},
                },
            },
        },
    }


# CRD kinds kubernetes-validate has no schema for; checked here instead. Any
# other kind without a schema (a typo'd kind or apiVersion) is a failure.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _monitor_schema("ServiceMonitor", "endpoints"),
    ("monitoring.coreos.com/v1", "PodMonitor"): _monitor_schema("PodMonitor", "podMetricsEndpoints"),
}


def validate_objects(docs, min_kube=None):
    """Every object against the Kubernetes schemas (strict) or, for the allowlisted CRDs, our own,
    at each of KUBE_VERSIONS from `min_kube` on."""
    problems = []
    versions = [v for v in KUBE_VERSIONS if min_kube is None or _vkey(v) >= _vkey(min_kube)]
    for d in docs:
        ident = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        crd = CRD_SCHEMAS.get((d.get("apiVersion"), d.get("kind")))
        if crd is not None:
            for err in jsonschema.Draft7Validator(crd).iter_errors(d):
                problems.append(f"{ident}: {'.'.join(map(str, err.path))}: {err.message}")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{ident} (k8s {version}): {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{ident} (k8s {version}): no schema: {getattr(e, 'message', e)}")
    return problems


def _vkey(v):
    return tuple(int(x) for x in v.split("."))


def lint_problems(values):
    report = helm.lint(CHART, copy.deepcopy(values) or None, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    return bad + list(report.get("errors") or [])


# --------------------------------------------------------------- test runner

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


# ------------------------------------------------------------------- tests


@test
def lint_passes_strictly_on_every_value_set():
    for label, values in VALUE_SETS.items():
        problems = lint_problems(values)
        assert not problems, f"helm lint --strict ({label}): {problems}"


@test
def every_object_validates_against_kubernetes_schemas():
    for label, values in VALUE_SETS.items():
        problems = validate_objects(render(values), MIN_KUBE.get(label))
        assert not problems, f"{label}:\n  " + "\n  ".join(problems)


@test
def validator_catches_bad_fields_and_unknown_kinds():
    # The checks above are only worth something if they can fail.
    docs = copy.deepcopy(render({}))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    container(dep)["bogusField"] = 1
    assert validate_objects([dep]), "a container field that does not exist passed validation"
    svc = copy.deepcopy(next(d for d in docs if d["kind"] == "Service"))
    svc["kind"] = "Servise"
    assert validate_objects([svc]), "a misspelt kind passed validation"
    sm = copy.deepcopy(objs(render(MONITORING_VALUES), "ServiceMonitor")[0])
    sm["spec"]["endpoints"][0]["prot"] = "http"
    assert validate_objects([sm]), "a misspelt ServiceMonitor field passed validation"


@test
def defaults_render_the_expected_objects():
    docs = render({})
    expected = {
        ("ServiceAccount", RELEASE),
        ("Deployment", name_of("router")),
        ("Deployment", name_of("draft-worker")),
        ("Deployment", name_of("target-worker")),
        ("Service", name_of("router")),
        ("Service", name_of("draft-worker")),
        ("Service", name_of("target-worker")),
        ("Service", name_of("etcd")),
        ("Service", name_of("etcd-headless")),
        ("StatefulSet", name_of("etcd")),
        ("PodDisruptionBudget", name_of("router")),
        ("PodDisruptionBudget", name_of("draft-worker")),
        ("PodDisruptionBudget", name_of("target-worker")),
    }
    eq(kinds_names(docs), expected, "objects rendered by default")
    for kind in ("ServiceMonitor", "PodMonitor", "HorizontalPodAutoscaler", "Secret"):
        assert not objs(docs, kind), f"{kind} rendered with default values"
    for d in docs:
        eq(d["metadata"].get("namespace"), NAMESPACE, f"namespace of {d['kind']}/{d['metadata']['name']}")


@test
def notes_render_and_name_the_router_service():
    notes = render_raw({})[f"{RELEASE}/templates/NOTES.txt"]
    assert f"svc/{name_of('router')}" in notes, notes
    assert "http://aerie-etcd.serving.svc:2379" in notes, notes


@test
def recommended_labels_and_selectors():
    docs = render({})
    for d in docs:
        labels = d["metadata"].get("labels", {})
        for lab in RECOMMENDED_LABELS:
            assert labels.get(lab), f"{d['kind']}/{d['metadata']['name']} lacks label {lab}"
        eq(labels["app.kubernetes.io/managed-by"], "Helm", "managed-by")
        eq(labels["app.kubernetes.io/instance"], RELEASE, "instance")
    for component in list(ROLES) + ["etcd"]:
        kind = "StatefulSet" if component == "etcd" else "Deployment"
        wl = get(docs, kind, name_of(component))
        sel = wl["spec"]["selector"]["matchLabels"]
        pod_labels = wl["spec"]["template"]["metadata"]["labels"]
        eq(sel.get("app.kubernetes.io/component"), component, f"{component} selector component")
        for k, v in sel.items():
            eq(pod_labels.get(k), v, f"{component} pod label {k}")
        svc = get(docs, "Service", name_of(component))
        eq(svc["spec"]["selector"], sel, f"{component} Service selector")
        pdb_sel = None
        if component != "etcd":
            pdb_sel = get(docs, "PodDisruptionBudget", name_of(component))["spec"]["selector"]["matchLabels"]
            eq(pdb_sel, sel, f"{component} PDB selector")


@test
def replicas_are_independent_per_role():
    docs = render({"router": {"replicas": 2}, "draftWorker": {"replicas": 3}, "targetWorker": {"replicas": 5}})
    eq(deployment(docs, "router")["spec"]["replicas"], 2, "router replicas")
    eq(deployment(docs, "draft-worker")["spec"]["replicas"], 3, "draft replicas")
    eq(deployment(docs, "target-worker")["spec"]["replicas"], 5, "target replicas")
    docs = render({"draftWorker": {"replicas": 0}})
    eq(deployment(docs, "draft-worker")["spec"]["replicas"], 0, "draft replicas scaled to zero")
    eq(deployment(docs, "target-worker")["spec"]["replicas"], 1, "target replicas untouched")


@test
def each_role_runs_its_subcommand_with_listen_flags():
    docs = render({})
    r = args_of(docs, "router")
    eq(r[0], "router", "router subcommand")
    eq(flag(r, "--host"), "0.0.0.0", "router --host")
    eq(flag(r, "--port"), "30000", "router --port")
    eq(flag(r, "--model-path"), "smollm2", "router --model-path")
    eq(flag(r, "--served-model-name"), "smollm2", "router --served-model-name")
    eq(flag(r, "--policy"), "least_load", "router --policy")
    t = args_of(docs, "target-worker")
    eq(t[0], "target-worker", "target subcommand")
    eq((flag(t, "--port"), flag(t, "--metrics-port")), ("31000", "31001"), "target ports")
    eq(flag(t, "--max-running-requests"), "16", "--max-running-requests")
    eq(flag(t, "--max-total-tokens"), "65536", "--max-total-tokens")
    eq(flag(t, "--drain-grace-secs"), "30", "--drain-grace-secs")
    eq(flag(t, "--tp-size"), "1", "--tp-size")
    assert "--speculative-adaptive" in t, "adaptive budgets by default, as aerie serve"
    assert "--speculative-adaptive" not in args_of(render({"targetWorker": {"speculativeAdaptive": False}}), "target-worker")
    d = args_of(docs, "draft-worker")
    eq(d[0], "draft-worker", "draft subcommand")
    eq((flag(d, "--port"), flag(d, "--metrics-port")), ("32000", "32001"), "draft ports")
    for component in ROLES:
        c = container(deployment(docs, component))
        assert all(isinstance(a, str) for a in c["args"]), f"{component}: non-string args {c['args']}"
        eq(c["image"], "aerie:cpu", f"{component} image by default")
        env = env_of(c)
        eq(env["AERIE_MODEL_DIR"]["value"], "/models", f"{component} AERIE_MODEL_DIR")
        eq(env["AERIE_LOG"]["value"], "info", f"{component} AERIE_LOG")
        assert "AERIE_THREADS" not in env, f"{component}: AERIE_THREADS set by default"
        assert {"mountPath": "/models", "name": "model"} in c["volumeMounts"], f"{component} model mount"
    docs = render({
        "router": {"policy": "prefix_affinity", "threads": 4, "extraArgs": ["--prefix-tokens", "128"]},
        "model": {"name": "/models/qwen.gguf", "servedModelName": "qwen"},
        "logLevel": "debug",
        "targetWorker": {"logLevel": "warn", "modelPath": "/models/big.gguf"},
    })
    r = args_of(docs, "router")
    eq(flag(r, "--policy"), "prefix_affinity", "router --policy override")
    eq(r[-2:], ["--prefix-tokens", "128"], "router extraArgs appended last")
    eq(flag(r, "--served-model-name"), "qwen", "served model name")
    eq(flag(r, "--model-path"), "/models/qwen.gguf", "router model path")
    eq(env_of(container(deployment(docs, "router")))["AERIE_THREADS"]["value"], "4", "AERIE_THREADS")
    eq(env_of(container(deployment(docs, "router")))["AERIE_LOG"]["value"], "debug", "global logLevel")
    eq(env_of(container(deployment(docs, "target-worker")))["AERIE_LOG"]["value"], "warn", "target logLevel")
    eq(flag(args_of(docs, "target-worker"), "--model-path"), "/models/big.gguf", "target modelPath")
    eq(flag(args_of(docs, "draft-worker"), "--model-path"), "/models/qwen.gguf", "draft model path")


@test
def speculative_flags_only_on_draft_workers():
    docs = render({})
    d = args_of(docs, "draft-worker")
    eq(flag(d, "--speculative-algorithm"), "EAGLE", "algorithm")
    eq(flag(d, "--speculative-num-steps"), "3", "num steps")
    eq(flag(d, "--speculative-eagle-topk"), "1", "topk")
    eq(flag(d, "--speculative-num-draft-tokens"), "4", "draft tokens")
    eq(flag(d, "--speculative-draft-model-path"), None, "draft model path unset by default")
    # The drafting flags go to draft workers only; the target's own
    # speculative flag is the adaptive budget (its scheduling, not drafting).
    for component in ("router", "target-worker"):
        spec = [a for a in args_of(docs, component) if a.startswith("--speculative") and a != "--speculative-adaptive"]
        assert not spec, f"{component} got speculative flags {spec}"
    assert "--speculative-adaptive" not in args_of(docs, "router"), "the router got --speculative-adaptive"
    docs = render({"draftWorker": {"speculative": {
        "algorithm": "EAGLE3", "numSteps": 5, "eagleTopk": 4, "numDraftTokens": 8, "minDraftScore": 0.25,
        "draftModelPath": "/models/head"}}})
    d = args_of(docs, "draft-worker")
    eq([flag(d, f) for f in ("--speculative-algorithm", "--speculative-num-steps", "--speculative-eagle-topk",
                              "--speculative-num-draft-tokens", "--speculative-min-draft-score", "--speculative-draft-model-path")],
       ["EAGLE3", "5", "4", "8", "0.25", "/models/head"], "configured speculative flags")


@test
def etcd_endpoint_and_cluster_reach_every_role():
    bundled = f"http://{RELEASE}-etcd.{NAMESPACE}.svc:2379"
    docs = render({})
    for component in ROLES:
        a = args_of(docs, component)
        eq(flag(a, "--etcd-endpoints"), bundled, f"{component} --etcd-endpoints")
        eq(flag(a, "--cluster"), RELEASE, f"{component} --cluster defaults to the release name")
    sts = get(docs, "StatefulSet", name_of("etcd"))
    client_svc = get(docs, "Service", name_of("etcd"))
    eq(client_svc["spec"]["ports"][0]["port"], 2379, "etcd client Service port")
    eq(sts["spec"]["serviceName"], name_of("etcd-headless"), "StatefulSet serviceName")
    eq(sts["spec"]["replicas"], 1, "single-node etcd")
    assert sts["spec"].get("volumeClaimTemplates"), "etcd persistence on by default"
    etcd = sts["spec"]["template"]["spec"]["containers"][0]
    eq(etcd["image"], "aerie-etcd:bookworm", "bundled etcd image")
    assert "command" not in etcd, "etcd command set although the image's entrypoint is etcd"
    eargs = dict(a.split("=", 1) for a in etcd["args"])
    eq(eargs["--advertise-client-urls"], bundled, "etcd advertises the URL the roles use")
    eq(eargs["--listen-client-urls"], "http://0.0.0.0:2379", "etcd listens on the client port")
    data_mount = [m["mountPath"] for m in etcd["volumeMounts"] if m["name"] == "data"][0]
    assert eargs["--data-dir"].startswith(data_mount + "/"), f"etcd data dir {eargs['--data-dir']} not on the volume"
    eq(sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"], 10002, "etcd runs as the image's uid")
    docs = render({"cluster": "prod-a", "etcd": {"bundled": {"persistence": {"enabled": False}}}})
    for component in ROLES:
        eq(flag(args_of(docs, component), "--cluster"), "prod-a", f"{component} --cluster override")
    sts = get(docs, "StatefulSet", name_of("etcd"))
    assert "volumeClaimTemplates" not in sts["spec"], "PVC rendered with persistence off"
    assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"], "etcd emptyDir"


@test
def external_etcd_replaces_the_bundled_one():
    docs = render(EXTERNAL_VALUES)
    assert not objs(docs, "StatefulSet"), "StatefulSet rendered for external etcd"
    etcd_objs = [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "etcd"]
    assert not etcd_objs, f"etcd objects rendered for external etcd: {kinds_names(etcd_objs)}"
    for component in ROLES:
        eq(flag(args_of(docs, component), "--etcd-endpoints"), ",".join(EXTERNAL_ETCD),
           f"{component} --etcd-endpoints (external)")
    render_fails({"etcd": {"external": {"endpoints": EXTERNAL_ETCD}}}, "etcd.bundled.enabled=false")
    render_fails({"etcd": {"bundled": {"enabled": False}}}, "no etcd configured")


@test
def workers_advertise_their_pod_ip_from_the_downward_api():
    docs = render({"targetWorker": {"port": 41000}})
    for component, port in (("draft-worker", 32000), ("target-worker", 41000)):
        c = container(deployment(docs, component))
        eq(env_of(c)["POD_IP"].get("valueFrom"), {"fieldRef": {"fieldPath": "status.podIP"}}, f"{component} POD_IP")
        eq(flag(c["args"], "--advertise-addr"), f"http://$(POD_IP):{port}", f"{component} --advertise-addr")
        eq(port_number(c, "grpc"), port, f"{component} grpc containerPort")
        eq(flag(c["args"], "--port"), str(port), f"{component} --port")
    assert "POD_IP" not in env_of(container(deployment(docs, "router"))), "router does not advertise"


@test
def probes_hit_the_real_health_endpoints():
    docs = render({})
    for component, (_, port, port_name) in ROLES.items():
        c = container(deployment(docs, component))
        eq(port_number(c, port_name), port, f"{component} {port_name} port")
        eq(c["readinessProbe"]["httpGet"], {"path": "/health", "port": port_name}, f"{component} readiness")
        eq(c["livenessProbe"]["httpGet"], {"path": "/live", "port": port_name}, f"{component} liveness")
        eq(c["startupProbe"]["httpGet"], {"path": "/live", "port": port_name}, f"{component} startup")
    eq(flag(args_of(docs, "target-worker"), "--metrics-port"), "31001", "target metrics port flag")
    docs = render({"draftWorker": {"metricsPort": 42001, "probes": {"startup": {"enabled": False},
                                                                   "readiness": {"periodSeconds": 7}}}})
    c = container(deployment(docs, "draft-worker"))
    eq(port_number(c, "metrics"), 42001, "metrics containerPort follows metricsPort")
    eq(flag(c["args"], "--metrics-port"), "42001", "--metrics-port follows metricsPort")
    assert "startupProbe" not in c, "startup probe rendered while disabled"
    eq(c["readinessProbe"]["periodSeconds"], 7, "readiness period")


@test
def services_expose_each_role():
    docs = render({"router": {"service": {"type": "NodePort", "nodePort": 30080, "port": 80}}})
    svc = get(docs, "Service", name_of("router"))
    eq(svc["spec"]["type"], "NodePort", "router Service type")
    eq(svc["spec"]["ports"], [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080}],
       "router Service ports")
    for component, grpc, metrics in (("draft-worker", 32000, 32001), ("target-worker", 31000, 31001)):
        svc = get(docs, "Service", name_of(component))
        eq(svc["spec"].get("clusterIP"), "None", f"{component} Service headless")
        eq({p["name"]: p["port"] for p in svc["spec"]["ports"]}, {"grpc": grpc, "metrics": metrics},
           f"{component} Service ports")


@test
def pod_disruption_budgets_per_role():
    docs = render({})
    for component in ROLES:
        eq(get(docs, "PodDisruptionBudget", name_of(component))["spec"].get("maxUnavailable"), 1,
           f"{component} PDB maxUnavailable")
    docs = render({"router": {"pdb": {"minAvailable": 1}},
                   "targetWorker": {"pdb": {"maxUnavailable": "25%"}},
                   "draftWorker": {"pdb": {"enabled": False}}})
    spec = get(docs, "PodDisruptionBudget", name_of("router"))["spec"]
    eq((spec.get("minAvailable"), "maxUnavailable" in spec), (1, False), "router PDB minAvailable only")
    eq(get(docs, "PodDisruptionBudget", name_of("target-worker"))["spec"]["maxUnavailable"], "25%", "target PDB %")
    assert ("PodDisruptionBudget", name_of("draft-worker")) not in kinds_names(docs), "disabled PDB rendered"
    render_fails({"router": {"pdb": {"maxUnavailable": ""}}}, "set minAvailable or maxUnavailable")


@test
def gpu_workers_get_cuda_image_gpus_and_placement():
    docs = render(GPU_VALUES)
    r = container(deployment(docs, "router"))
    eq(r["image"], "aerie:cpu", "router stays on the CPU image")
    assert gpu_limit(r) is None, "router got a GPU"
    rspec = deployment(docs, "router")["spec"]["template"]["spec"]
    assert "nodeSelector" not in rspec and "tolerations" not in rspec, "router got GPU placement"
    for component in ("draft-worker", "target-worker"):
        dep = deployment(docs, component)
        c = container(dep)
        spec = dep["spec"]["template"]["spec"]
        eq(c["image"], "aerie:cuda", f"{component} image")
        eq(gpu_limit(c), 1, f"{component} nvidia.com/gpu limit")
        eq(spec.get("nodeSelector"), {"nvidia.com/gpu.present": "true"}, f"{component} nodeSelector")
        tol = spec.get("tolerations", [])
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tol, f"{component}: {tol}"
        args = c["args"]
        i = args.index("--device")
        eq(args[i:i + 4], ["--device", "cuda", "--mem-fraction-static", "0.85"], f"{component} runs its model on the GPU")
    tol = deployment(docs, "target-worker")["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"} in tol, \
        "block tolerations kept next to the GPU ones"
    # Drafts can stay on CPU while targets use GPUs; a block's explicit GPU limit wins.
    docs = render(merged(GPU_VALUES, {
        "draftWorker": {"useGpu": False, "speculative": {"algorithm": "NGRAM"}},
        "targetWorker": {"resources": {"limits": {"nvidia.com/gpu": 4}}, "image": {"tag": "cuda-12.9"}},
    }))
    d = container(deployment(docs, "draft-worker"))
    eq((d["image"], gpu_limit(d)), ("aerie:cpu", None), "CPU drafts next to GPU targets")
    assert "--device" not in d["args"], "a CPU draft worker gets no --device"
    assert "tolerations" not in deployment(docs, "draft-worker")["spec"]["template"]["spec"], "CPU draft tolerations"
    t = container(deployment(docs, "target-worker"))
    eq((t["image"], gpu_limit(t)), ("aerie:cuda-12.9", 4), "target image override and explicit GPU limit")
    # Without gpu.enabled nothing asks for a GPU.
    for component in ROLES:
        c = container(deployment(render({}), component))
        assert gpu_limit(c) is None, f"{component} GPU by default"
        assert "--device" not in c.get("args", []), f"{component} --device by default"
    t = container(deployment(render(merged(GPU_VALUES, {"gpu": {"memFractionStatic": 0.6}})), "target-worker"))
    eq(t["args"][t["args"].index("--mem-fraction-static") + 1], "0.6", "gpu.memFractionStatic")
    render_fails({"gpu": {"memFractionStatic": 1.5}}, "memFractionStatic")


@test
def tensor_parallel_two_mounts_shm_and_asks_two_gpus():
    docs = render(TP2_VALUES)
    dep = deployment(docs, "target-worker")
    c = container(dep)
    eq(flag(c["args"], "--tp-size"), "2", "--tp-size")
    eq(gpu_limit(c), 2, "nvidia.com/gpu = tensorParallelSize")
    shm_mounts = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    eq(len(shm_mounts), 1, "one /dev/shm mount")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    eq(vols[shm_mounts[0]["name"]].get("emptyDir"), {"medium": "Memory", "sizeLimit": "16Gi"}, "shm volume")
    eq(gpu_limit(container(deployment(docs, "draft-worker"))), 1, "draft GPU count unaffected by TP")
    for component in ("router", "draft-worker"):
        mounts = container(deployment(docs, component)).get("volumeMounts", [])
        assert all(m["mountPath"] != "/dev/shm" for m in mounts), f"{component} got /dev/shm"
    mounts = container(deployment(render({}), "target-worker"))["volumeMounts"]
    assert all(m["mountPath"] != "/dev/shm" for m in mounts), "/dev/shm mounted at TP 1"
    # TP=4: four ranks in the pod, four GPUs.
    c = container(deployment(render(merged(TP2_VALUES, {"targetWorker": {"tensorParallelSize": 4}})), "target-worker"))
    eq((flag(c["args"], "--tp-size"), gpu_limit(c)), ("4", 4), "TP=4 flag and GPU count")
    # On the CPU a group needs no GPU, only the shared /dev/shm.
    c = container(deployment(render({"targetWorker": {"tensorParallelSize": 2}}), "target-worker"))
    eq((flag(c["args"], "--tp-size"), gpu_limit(c)), ("2", None), "CPU TP=2 asks no GPU")
    assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"]), "CPU TP=2 mounts /dev/shm"


@test
def colocated_layout_puts_target_and_draft_in_one_pod():
    docs = render(COLOCATED_VALUES)
    names = kinds_names(docs)
    for component in ("draft-worker", "target-worker"):
        assert ("Deployment", name_of(component)) not in names, f"separate {component} rendered beside the colocated pods"
    dep = deployment(docs, "worker")
    eq(dep["spec"]["replicas"], 2, "colocated replicas")
    spec = dep["spec"]["template"]["spec"]
    eq(spec.get("shareProcessNamespace"), True, "shared process namespace (CUDA IPC needs the peer's PID)")
    cs = {c["name"]: c for c in spec["containers"]}
    eq(sorted(cs), ["draft-worker", "target-worker"], "containers")
    t, d = cs["target-worker"], cs["draft-worker"]
    eq((t["args"][0], d["args"][0]), ("target-worker", "draft-worker"), "subcommands")
    eq(flag(t["args"], "--feature-transport"), "auto", "target --feature-transport")
    eq(flag(d["args"], "--speculative-algorithm"), "EAGLE", "draft keeps its speculative flags")
    assert "--speculative-algorithm" not in t["args"], "speculative flags on the target"
    eq((flag(t["args"], "--port"), flag(d["args"], "--port")), ("31000", "32000"), "distinct gRPC ports")
    ports = [p["name"] for c in cs.values() for p in c["ports"]]
    eq(len(ports), len(set(ports)), f"port names unique in the pod: {ports}")
    for c, prefix in ((t, "target"), (d, "draft")):
        eq(c["readinessProbe"]["httpGet"]["port"], f"{prefix}-metrics", f"{prefix} probe port")
        shm = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        eq(len(shm), 1, f"{prefix} mounts /dev/shm")
        eq(shm[0]["name"], "dshm", f"{prefix} shares the one shm volume")
        assert gpu_limit(c) is None and "claims" not in c.get("resources", {}), f"{prefix} asks a GPU on the CPU"
    vols = {v["name"]: v for v in spec["volumes"]}
    eq(vols["dshm"]["emptyDir"], {"medium": "Memory", "sizeLimit": "2Gi"}, "the pod's /dev/shm")
    eq(spec["terminationGracePeriodSeconds"], 45, "the target's grace period covers the pod")
    svc = get(docs, "Service", name_of("worker"))
    eq(svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"], "Service selects the colocated pods")
    eq(sorted(p["name"] for p in svc["spec"]["ports"]), ["draft-grpc", "draft-metrics", "target-grpc", "target-metrics"], "Service ports")
    assert not objs(docs, "ResourceClaimTemplate"), "a GPU claim without gpu.enabled"
    pdb = get(docs, "PodDisruptionBudget", name_of("worker"))
    eq(pdb["spec"]["selector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"], "the pairs' PDB selects them")
    for component in ("draft-worker", "target-worker"):
        assert ("PodDisruptionBudget", name_of(component)) not in names, f"a PDB for the absent {component} Deployment"

    # On a GPU: one DRA claim per pod, named by both containers; no device-plugin limit.
    docs = render(COLOCATED_GPU_VALUES)
    spec = deployment(docs, "worker")["spec"]["template"]["spec"]
    rct = get(docs, "ResourceClaimTemplate", name_of("gpu"))
    eq(spec["resourceClaims"], [{"name": "gpu", "resourceClaimTemplateName": name_of("gpu")}], "pod claim")
    req = rct["spec"]["spec"]["devices"]["requests"]
    eq(req, [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com", "allocationMode": "ExactCount", "count": 1}}], "one GPU")
    fractions = {}
    for c in spec["containers"]:
        eq(c["resources"].get("claims"), [{"name": "gpu"}], f"{c['name']} names the pod's GPU claim")
        assert gpu_limit(c) is None, f"{c['name']} also asks the device plugin for a GPU"
        eq(c["image"], "aerie:cuda", f"{c['name']} image")
        eq(flag(c["args"], "--device"), "cuda", f"{c['name']} --device")
        fractions[c["name"]] = flag(c["args"], "--mem-fraction-static")
    eq(fractions, {"target-worker": "0.75", "draft-worker": "0.1"}, "the GPU's memory split")
    eq(spec.get("nodeSelector"), {"nvidia.com/gpu.present": "true"}, "GPU placement")
    pm = get(docs, "PodMonitor", name_of("workers"))
    eq([e["port"] for e in pm["spec"]["podMetricsEndpoints"]], ["target-metrics", "draft-metrics"], "PodMonitor scrapes both")
    eq(pm["spec"]["selector"]["matchExpressions"][0]["values"], ["worker"], "PodMonitor selects the colocated pods")
    problems = validate_objects(docs, "1.34.0")
    assert not problems, problems
    assert validate_objects([rct]), "a resource.k8s.io/v1 object passed the 1.25 schemas"
    # Refusals.
    render_fails(merged(COLOCATED_GPU_VALUES, {"colocated": {"gpu": {"targetMemFractionStatic": 0.8, "draftMemFractionStatic": 0.3}}}), "must not exceed 1")
    render_fails(merged(COLOCATED_VALUES, {"targetWorker": {"tensorParallelSize": 2}}), "tensorParallelSize 1")
    render_fails(merged(COLOCATED_GPU_VALUES, {"draftWorker": {"useGpu": False}}), "alike")
    render_fails(merged(COLOCATED_VALUES, {"draftWorker": {"port": 31000}}), "ports")
    render_fails(merged(COLOCATED_VALUES, {"colocated": {"featureTransport": "carrier-pigeon"}}), "featureTransport")


@test
def target_grace_period_outlasts_the_drain():
    docs = render({})
    spec = deployment(docs, "target-worker")["spec"]["template"]["spec"]
    eq(spec["terminationGracePeriodSeconds"], 45, "default grace = drain 30 + 15")
    docs = render({"targetWorker": {"drainGraceSecs": 120}})
    eq(flag(args_of(docs, "target-worker"), "--drain-grace-secs"), "120", "--drain-grace-secs")
    eq(deployment(docs, "target-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 135,
       "grace follows drainGraceSecs")
    render_fails({"targetWorker": {"drainGraceSecs": 60, "terminationGracePeriodSeconds": 30}}, "must exceed")


@test
def monitoring_objects_and_hpa_when_enabled():
    docs = render(MONITORING_VALUES)
    sm = get(docs, "ServiceMonitor", name_of("router"))
    router_svc = get(docs, "Service", name_of("router"))
    for k, v in sm["spec"]["selector"]["matchLabels"].items():
        eq(router_svc["metadata"]["labels"].get(k), v, f"ServiceMonitor selects router Service label {k}")
    ep = sm["spec"]["endpoints"][0]
    eq((ep["port"], ep["path"], ep["interval"]), ("http", "/metrics", "30s"), "ServiceMonitor endpoint")
    assert ep["port"] in [p["name"] for p in router_svc["spec"]["ports"]], "ServiceMonitor port not on the Service"
    eq(sm["metadata"]["labels"].get("release"), "kube-prometheus", "ServiceMonitor extra labels")
    eq(sm["spec"]["namespaceSelector"], {"matchNames": [NAMESPACE]}, "ServiceMonitor namespace")
    pm = objs(docs, "PodMonitor")
    eq(len(pm), 1, "one PodMonitor")
    pm = pm[0]
    pep = pm["spec"]["podMetricsEndpoints"][0]
    eq((pep["port"], pep["path"], pep["interval"]), ("metrics", "/metrics", "20s"), "PodMonitor endpoint")
    sel = pm["spec"]["selector"]
    for component in ROLES:
        labels = deployment(docs, component)["spec"]["template"]["metadata"]["labels"]
        matches = all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items()) and all(
            labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", []))
        eq(matches, component != "router", f"PodMonitor selects {component}")
        if component != "router":
            port_number(container(deployment(docs, component)), "metrics")
    hpas = objs(docs, "HorizontalPodAutoscaler")
    eq([h["metadata"]["name"] for h in hpas], [name_of("target-worker")], "only the enabled HPA")
    hpa = hpas[0]
    eq(hpa["apiVersion"], "autoscaling/v2", "HPA apiVersion")
    eq(hpa["spec"]["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": "Deployment", "name": name_of("target-worker")},
       "HPA target")
    eq((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]), (2, 10), "HPA bounds")
    eq(hpa["spec"]["metrics"], [{"type": "Pods", "pods": {
        "metric": {"name": "aerie_target_waiting_requests"},
        "target": {"type": "AverageValue", "averageValue": "3"}}}], "HPA metric")
    assert "replicas" not in deployment(docs, "target-worker")["spec"], "replicas set on an autoscaled Deployment"
    eq(deployment(docs, "draft-worker")["spec"]["replicas"], 1, "draft replicas kept")
    # An External metric, e.g. a router-wide queue, on the router block.
    docs = render({"router": {"autoscaling": {"enabled": True, "metric": {
        "type": "External", "name": "aerie_router_in_flight_requests", "selector": {"cluster": "aerie"},
        "averageValue": "100"}}}})
    m = get(docs, "HorizontalPodAutoscaler", name_of("router"))["spec"]["metrics"][0]
    eq(m, {"type": "External", "external": {"metric": {"name": "aerie_router_in_flight_requests",
                                                       "selector": {"matchLabels": {"cluster": "aerie"}}},
                                            "target": {"type": "AverageValue", "averageValue": "100"}}},
       "External HPA metric")
    assert not validate_objects(docs), validate_objects(docs)


@test
def api_key_comes_from_a_secret():
    docs = render({"router": {"apiKey": {"value": "s3cret"}}})
    sec = get(docs, "Secret", f"{name_of('router')}-api-key")
    eq(sec["data"], {"api-key": "czNjcmV0"}, "Secret data")
    env = env_of(container(deployment(docs, "router")))
    eq(env["AERIE_API_KEY"]["valueFrom"], {"secretKeyRef": {"name": f"{name_of('router')}-api-key", "key": "api-key"}},
       "AERIE_API_KEY from the chart's Secret")
    assert "checksum/api-key" in deployment(docs, "router")["spec"]["template"]["metadata"]["annotations"]
    docs = render({"router": {"apiKey": {"existingSecret": "my-keys", "secretKey": "token"}}})
    assert not objs(docs, "Secret"), "Secret created although existingSecret is given"
    eq(env_of(container(deployment(docs, "router")))["AERIE_API_KEY"]["valueFrom"],
       {"secretKeyRef": {"name": "my-keys", "key": "token"}}, "AERIE_API_KEY from the existing Secret")
    assert "AERIE_API_KEY" not in env_of(container(deployment(render({}), "router"))), "API key env by default"
    for component in ("draft-worker", "target-worker"):
        assert "AERIE_API_KEY" not in env_of(container(deployment(docs, component))), f"{component} got the key"


@test
def model_volume_choices():
    docs = render({"model": {"volume": {"type": "persistentVolumeClaim",
                                        "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}}})
    for component in ROLES:
        dep = deployment(docs, component)
        vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        eq(vols["model"], {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
           f"{component} model PVC")
        mount = [m for m in container(dep)["volumeMounts"] if m["name"] == "model"][0]
        eq(mount.get("readOnly"), True, f"{component} read-only model mount")
    assert not validate_objects(docs), validate_objects(docs)
    docs = render({"model": {"dir": "/data/models", "volume": {"type": "hostPath"}}})
    dep = deployment(docs, "target-worker")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    eq(vols["model"]["hostPath"], {"path": "/var/lib/aerie/models", "type": "DirectoryOrCreate"}, "hostPath")
    eq(env_of(container(dep))["AERIE_MODEL_DIR"]["value"], "/data/models", "AERIE_MODEL_DIR follows model.dir")
    render_fails({"model": {"volume": {"type": "persistentVolumeClaim"}}}, "claimName is required")


@test
def schema_rejects_typos_and_wrong_types():
    ch = chart()
    ch.validate_schema({})  # defaults pass
    ch.validate_schema(merged(*VALUE_SETS.values()) | {"etcd": EXTERNAL_VALUES["etcd"]})
    bad = [
        ({"draftWorker": {"replica": 2}}, "replica"),
        ({"targetWorker": {"probes": {"readiness": {"periodSecond": 3}}}}, "periodSecond"),
        ({"monitoring": {"serviceMonitor": {"enable": True}}}, "enable"),
        ({"etcd": {"bundeld": {"enabled": True}}}, "bundeld"),
        ({"routr": {}}, "routr"),
        ({"router": {"replicas": "two"}}, "replicas"),
        ({"targetWorker": {"tensorParallelSize": 0}}, "tensorParallelSize"),
        ({"gpu": {"enabled": "yes"}}, "enabled"),
        ({"router": {"policy": "random"}}, "policy"),
        ({"draftWorker": {"speculative": {"algorithm": "MEDUSA"}}}, "algorithm"),
        ({"router": {"resources": {"limit": {"cpu": 1}}}}, "limit"),
        ({"etcd": {"external": {"endpoints": "http://etcd:2379"}}}, "endpoints"),
        ({"cluster": "prod/a"}, "cluster"),  # '/' would break the etcd key layout
    ]
    for values, needle in bad:
        try:
            ch.validate_schema(values)
        except helm.HelmValuesError as e:
            assert needle in str(e), f"{values}: error does not name {needle!r}: {e}"
        else:
            raise AssertionError(f"schema accepted {values}")
        # render enforces the schema too, so `helm install` stops on the same values.
        render_fails(values, needle)


@test
def every_value_is_documented_and_in_the_schema():
    text = open(os.path.join(CHART, "values.yaml")).read().splitlines()
    # helm-docs style: a key is documented by a comment block right above it whose
    # first line starts with "# --". A documented key covers everything under it
    # (a map's defaults, a list's items); an undocumented map needs its keys documented.
    undocumented = []
    covered_indent = None  # lines indented deeper than this belong to a documented key
    for i, line in enumerate(text):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if not stripped or stripped.startswith("#"):
            continue
        if covered_indent is not None:
            if indent > covered_indent or (indent == covered_indent and stripped.startswith("- ")):
                continue
            covered_indent = None
        m = re.match(r"([A-Za-z0-9_.\-/]+):(\s|$)", stripped)
        if not m:
            undocumented.append(f"line {i + 1}: not a key where one was expected: {stripped}")
            continue
        block = []
        j = i - 1
        while j >= 0 and text[j].strip().startswith("#"):
            block.append(text[j].strip())
            j -= 1
        documented = bool(block) and block[-1].startswith("# --")
        opens_block = re.match(r"[A-Za-z0-9_.\-/]+:\s*$", stripped) is not None
        if documented:
            covered_indent = indent
        elif not opens_block:
            undocumented.append(f"line {i + 1}: {stripped}")
        else:
            nxt = next((t for t in text[i + 1:] if t.strip() and not t.strip().startswith("#")), "")
            if nxt.lstrip().startswith("- "):
                undocumented.append(f"line {i + 1}: {stripped} (a list)")
    assert not undocumented, "values without a '# --' comment:\n  " + "\n  ".join(undocumented)

    schema = json.load(open(os.path.join(CHART, "values.schema.json")))
    eq(schema.get("$schema"), "http://json-schema.org/draft-07/schema#", "schema draft")
    defs = schema.get("definitions", {})

    def resolve(node):
        while "$ref" in node:
            node = defs[node["$ref"].split("/")[-1]]
        return node

    missing = []

    def walk(values, node, path):
        node = resolve(node)
        if not isinstance(values, dict) or "properties" not in node:
            return
        for k, v in values.items():
            if k not in node["properties"]:
                missing.append(".".join(path + [k]))
            else:
                walk(v, node["properties"][k], path + [k])

    walk(chart().values, schema, [])
    assert not missing, f"values missing from values.schema.json: {missing}"
    eq(schema.get("additionalProperties"), False, "top-level additionalProperties")


# --------------------------------------------------------------------- main


def main():
    start = time.monotonic()
    passed = failed = 0
    for fn in TESTS:
        t0 = time.monotonic()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            failed += 1
            detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
            print(f"FAIL {fn.__name__} ({time.monotonic() - t0:.2f}s)\n    {detail}")
        else:
            passed += 1
            print(f"ok   {fn.__name__} ({time.monotonic() - t0:.2f}s)")
    if _chart is not None:
        _chart.close()
    print(f"chart tests took {time.monotonic() - start:.1f}s")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
