"""Install greenml as users do and run it under each identity it may get, on a real API server.

What neither the emulator nor an admin kubeconfig can show (issue 12):

- **The chart installs** with the real helm (`helm install greenml charts/greenml-operator
  -n greenml-system`, taking over the CRDs the session applied), and uninstalling it keeps
  the CRDs (``crds.keep``).
- **The chart's RBAC is enough**: the operator, authenticated as the chart's ServiceAccount
  (a `kubectl create token` bearer token) creates the owned, suspended Job of a TrainingJob
  and un-suspends it in its window, writes status through the status subresource, posts
  Events, watches Nodes (their region label sets the zone; the same events give the GPU
  capacity, GREENML_GPU_CAPACITY unset) and server-side applies an InferenceBudget's variant
  to its Deployment: no 401/403 in its log. A rule the chart lacks fails here with its 403.
- **Every way to authenticate**: in-cluster config (token and CA at the fixed
  ServiceAccount paths, KUBERNETES_SERVICE_HOST/PORT), and kubeconfig users with a client
  certificate, a static ``token``, a ``tokenFile`` and an ``exec`` plugin: both the
  operator's own client and kopf's watches use it.
- **REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE** set to a system bundle without the cluster's CA
  (common where a proxy's CA is added): the operator and `greenml report` keep verifying
  the API server with the kubeconfig's CA.
- **`kubectl get`** prints the START and DEADLINE columns as the status timestamps.

The operator runs out of cluster (`greenml run`, a subprocess) scoped to a fresh
namespace; the chart's own Deployment is "run" by kwok (its pod is fake).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import certifi
import pytest
import yaml

from e2e.cluster.controlplane import STATIC_TOKEN_USER
from e2e.conftest import REPO
from e2e.test_inferencebudget_e2e import IB, budget
from greenml.kube import Kube
from greenml.kube.client import path_for
from tests.helmbin import ToolUnavailable, run_tool, tool
from tests.integration.harness import Operator, operator_env, run_operator, wait_for, write_intensity

pytestmark = pytest.mark.slow   # eight operator runs (2-15 s each); the module takes ~45 s

CHART = REPO / "charts" / "greenml-operator"
RELEASE, RELEASE_NS = "greenml", "greenml-system"   # as README's install line
TJ = ("greenml.io/v1alpha1", "trainingjobs")
STEP = timedelta(seconds=2)
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")   # where client and kopf look in a pod
# A CA bundle without the cluster's CA, as REQUESTS_CA_BUNDLE often names in real deployments.
SYSTEM_BUNDLE = next((p for p in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
                      if Path(p).is_file()), certifi.where())
# what an RBAC or authentication failure leaves in a log (kopf's and ours)
DENIED = re.compile(r"forbidden|unauthorized|(?<![\w.:])40[13](?![\w.])", re.IGNORECASE)
REGION_ZONE = {"europe-west3": "FR"}   # the kwok nodes' region → a zone no default names


# ------------------------------------------------------------------ helpers
def _tool(name: str) -> Path:
    try:
        return tool(name)
    except ToolUnavailable as exc:
        pytest.skip(f"{name} unavailable: {exc}")


def kubectl(*args: str) -> str:
    """The real kubectl as the admin (the session's KUBECONFIG)."""
    return run_tool(_tool("kubectl"), "--kubeconfig", os.environ["KUBECONFIG"], *args).stdout


def sa_token(name: str, namespace: str) -> str:
    return kubectl("create", "token", name, "-n", namespace, "--duration", "1h").strip()


def kubeconfig_for(path: Path, user: dict[str, Any]) -> Path:
    """The admin kubeconfig's current cluster (server, CA) with another user entry."""
    admin = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    ctx_name = admin.get("current-context")
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
    cluster = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
        "clusters": [{"name": "e2e", "cluster": cluster["cluster"]}],
        "users": [{"name": "e2e", "user": user}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}]}))
    path.chmod(0o600)
    return path


def grid_start() -> datetime:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return now - timedelta(seconds=now.second % 2)


def training_job(name: str, ns: str, gpus: int = 1) -> dict:
    return {
        "apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"schedule": {"maxDelay": "40s", "estimatedDuration": "4s"},
                 "template": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                     {"name": "train", "image": "busybox:1.36", "command": ["true"],
                      "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}}}},
    }


def chat_deployment(ns: str) -> dict:
    """The InferenceBudget's target, on an image neither variant names: any variant applied shows."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat", "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "chat"}},
                     "template": {"metadata": {"labels": {"app": "chat"}}, "spec": {"containers": [
                         {"name": "server", "image": "busybox:1.34", "args": ["sleep", "3600"]}]}}}}


def env_for(tmp: Path, ns: str | None, kubeconfig: Path | None, values: list[float],
            **settings: str) -> dict[str, str]:
    """The operator's environment on an intensity file starting now: scoped to ``ns`` (None:
    all namespaces, the chart's default), no KUBECONFIG when ``kubeconfig`` is None."""
    intensity = write_intensity(tmp / f"ci-{uuid.uuid4().hex[:6]}.csv", grid_start(), STEP, values)
    env = operator_env(tmp, kubeconfig or tmp / "unused", intensity, **({"namespace": ns} if ns else {}), **settings)
    if kubeconfig is None:
        env.pop("KUBECONFIG", None)
    return env


def with_system_bundle(env: dict[str, str]) -> dict[str, str]:
    return env | {"REQUESTS_CA_BUNDLE": SYSTEM_BUNDLE, "CURL_CA_BUNDLE": SYSTEM_BUNDLE}


def assert_never_denied(op: Operator) -> None:
    """No 401/403 in the operator's log, except the 403 any identity gets for writing into a
    namespace being deleted (an earlier test's, seen by an operator watching all namespaces)."""
    denied = [line for line in op.logs().splitlines() if DENIED.search(line) and "NamespaceTerminating" not in line
              and "because it is being terminated" not in line]
    assert not denied, "the operator was denied (RBAC or authentication):\n" + "\n".join(denied[:20])


def status_of(kube: Kube, api: tuple[str, str], ns: str, name: str) -> dict:
    return (kube.get(*api, ns, name) or {}).get("status") or {}


def planned(kube: Kube, ns: str, name: str) -> dict | None:
    st = status_of(kube, TJ, ns, name)
    return st if (st.get("plan") or {}).get("plannedStart") and st.get("observedGeneration") == 1 else None


async def job_and_plan(kube: Kube, ns: str, name: str, op: Operator) -> tuple[dict, dict]:
    """Create a TrainingJob (as the admin); the operator's suspended, owned Job and its plan."""
    tj = kube.request("POST", path_for(*TJ, ns), "create TrainingJob", body=training_job(name, ns))
    job = await wait_for(f"the Job of {name}", lambda: kube.get("batch/v1", "jobs", ns, f"{name}-run"), op=op,
                         timeout=45)
    # (created suspended; on a flat curve the plan runs it now, and the loop resumes it as soon
    # as the Job's ADDED event arrives — so its suspend flag here is either)
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner.get("controller")) == ("TrainingJob", tj["metadata"]["uid"], True)
    st = await wait_for(f"a plan in {name}'s status", lambda: planned(kube, ns, name), op=op, timeout=45)
    return job, st


def create_namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.request("POST", "/api/v1/namespaces", "create namespace",
                 body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def delete_namespace(kube: Kube, name: str) -> None:
    try:
        kube.request("DELETE", f"/api/v1/namespaces/{name}", "delete namespace")
    except Exception:
        pass


# ------------------------------------------------------------------ the Helm release
@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str
    cluster_role: str
    cluster_role_binding: str
    install_output: str


@pytest.fixture(scope="module")
def release(control_plane, kube, crds) -> Iterator[Release]:
    """`helm install` of the chart (real helm), the CRDs the session applied taken over by
    the release; uninstalled after the module (the CRDs stay: crds.keep)."""
    helm = _tool("helm")
    kcfg = os.environ["KUBECONFIG"]
    if subprocess.run([str(helm), "status", RELEASE, "-n", RELEASE_NS, "--kubeconfig", kcfg],
                      capture_output=True).returncode == 0:
        pytest.skip(f"a Helm release {RELEASE} already exists in {RELEASE_NS}: not touching it")
    # on the suite's own plane the chart takes the CRDs over; another cluster keeps its own
    crd_args = ["--take-ownership"] if control_plane is not None else ["--set", "crds.enabled=false"]
    out = run_tool(helm, "install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace",
                   "--kubeconfig", kcfg, *crd_args).stdout
    try:
        docs = [d for d in yaml.safe_load_all(run_tool(helm, "get", "manifest", RELEASE, "-n", RELEASE_NS,
                                                       "--kubeconfig", kcfg).stdout) if d]
        names = {d["kind"]: d["metadata"]["name"] for d in docs}
        yield Release(RELEASE, RELEASE_NS, names["ServiceAccount"], names["ClusterRole"],
                      names["ClusterRoleBinding"], out)
    finally:
        subprocess.run([str(helm), "uninstall", RELEASE, "-n", RELEASE_NS, "--kubeconfig", kcfg, "--wait"],
                       capture_output=True, timeout=120)
        try:
            kube.request("DELETE", f"/api/v1/namespaces/{RELEASE_NS}", "delete namespace")
        except Exception:
            pass


@pytest.fixture(scope="module")
def operator_token(release) -> str:
    """A bearer token of the chart's ServiceAccount (a TokenRequest, as a pod would mount)."""
    return sa_token(release.service_account, release.namespace)


def test_helm_install_creates_the_identity_and_its_rbac(release, kube):
    assert "STATUS: deployed" in release.install_output, release.install_output
    assert kube.get("v1", "serviceaccounts", release.namespace, release.service_account) is not None
    rbac = "rbac.authorization.k8s.io/v1"
    role = kube.get(rbac, "clusterroles", None, release.cluster_role)
    assert role and all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    binding = kube.get(rbac, "clusterrolebindings", None, release.cluster_role_binding)
    assert binding["roleRef"]["name"] == release.cluster_role
    assert {"kind": "ServiceAccount", "name": release.service_account,
            "namespace": release.namespace} in binding["subjects"]
    # the Deployment runs under that ServiceAccount (kwok fakes its pod)
    deployments = kube.request("GET", path_for("apps/v1", "deployments", release.namespace), "list")["items"]
    assert [d["spec"]["template"]["spec"]["serviceAccountName"] for d in deployments] == [release.service_account]


def test_the_chart_takes_over_the_crds_and_keeps_them(release, kube, local_plane):
    for name in ("trainingjobs.greenml.io", "inferencebudgets.greenml.io"):
        meta = kube.get("apiextensions.k8s.io/v1", "customresourcedefinitions", None, name)["metadata"]
        annotations = meta.get("annotations") or {}
        assert annotations.get("meta.helm.sh/release-name") == RELEASE, annotations
        assert annotations.get("helm.sh/resource-policy") == "keep", annotations


# ------------------------------------------------------------------ the chart's identity, out of cluster
@pytest.mark.timeout(150)
def test_the_charts_service_account_runs_every_part_of_the_operator(release, operator_token, kube, namespace,
                                                                     tmp_path):
    """Job (created suspended, owned, un-suspended in the window), status, Events, Nodes,
    server-side apply of a variant: all as the chart's ServiceAccount, with REQUESTS_CA_BUNDLE
    naming a bundle that lacks the cluster's CA."""
    kubeconfig = kubeconfig_for(tmp_path / "sa.kubeconfig", {"token": operator_token})
    t0 = grid_start()                                        # the intensity file starts here or a step later
    values = [400.0] * 6 + [50.0] * 3 + [400.0] * 300        # the window opens 12 s after its start
    env = with_system_bundle(env_for(tmp_path, namespace, kubeconfig, values, zone_map=json.dumps(REGION_ZONE)))
    env.pop("GREENML_GPU_CAPACITY")                          # capacity from the nodes' allocatable GPUs
    kube.request("POST", path_for("apps/v1", "deployments", namespace), "create Deployment",
                 body=chat_deployment(namespace))

    async def scenario():
        with run_operator(tmp_path, env) as op:
            kube.request("POST", path_for(*IB, namespace), "create InferenceBudget", body=budget(namespace))
            _, st = await job_and_plan(kube, namespace, "llm", op)
            assert st["phase"] == "Waiting" and st["plan"]["savingsPercent"] > 0
            # the Nodes' watch: their region label → the zone (the same events carry the GPUs)
            await wait_for("the zone from the nodes' region",
                           lambda: status_of(kube, TJ, namespace, "llm").get("zone") == "FR", op=op, timeout=30)

            def events():
                items = kube.request("GET", path_for("v1", "events", namespace), "list Events")["items"]
                return [e for e in items if e["involvedObject"].get("name") == "llm"]
            posted = await wait_for("an Event about the TrainingJob", events, op=op, timeout=30)
            assert posted[0]["involvedObject"]["kind"] == "TrainingJob"

            def variant_applied():
                d = kube.get("apps/v1", "deployments", namespace, "chat") or {}
                image = d["spec"]["template"]["spec"]["containers"][0]["image"]
                return d if image != "busybox:1.34" else None
            d = await wait_for("a variant applied to the Deployment", variant_applied, op=op, timeout=45)
            managers = {(m["manager"], m["operation"]) for m in d["metadata"]["managedFields"]}
            assert ("greenml-operator", "Apply") in managers, managers
            assert d["spec"]["template"]["spec"]["containers"][0]["args"] == ["sleep", "3600"]
            ib = await wait_for("the budget's status", lambda: status_of(kube, IB, namespace, "chat-budget")
                                .get("activeVariant"), op=op, timeout=30)
            images = {v["name"]: v["patch"]["spec"]["template"]["spec"]["containers"][0]["image"]
                      for v in budget(namespace)["spec"]["variants"]}
            assert d["spec"]["template"]["spec"]["containers"][0]["image"] == images[ib]

            def running():
                j = kube.get("batch/v1", "jobs", namespace, "llm-run")
                return j if j and j["spec"].get("suspend") is False else None
            await wait_for("the Job un-suspended in its window", running, op=op, timeout=60)
            assert datetime.now(timezone.utc) >= t0 + timedelta(seconds=10), "un-suspended before the window"
            assert op.alive()
            assert_never_denied(op)

    asyncio.run(scenario())


# ------------------------------------------------------------------ in-cluster config
@pytest.fixture
def serviceaccount_files(local_plane, operator_token, release) -> Iterator[Path]:
    """The token, CA and namespace at the fixed paths a pod has them; removed after."""
    def refuse(reason: str):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"in-cluster config test cannot run: {reason}", pytrace=False)
        pytest.skip(reason)

    if SA_DIR.exists():
        refuse(f"{SA_DIR} exists and is not this test's (running in a pod?)")
    if os.geteuid() != 0:
        refuse(f"writing {SA_DIR} needs root")
    created = [p for p in (SA_DIR, *SA_DIR.parents) if not p.exists()]
    SA_DIR.mkdir(parents=True)
    try:
        (SA_DIR / "token").write_text(operator_token)
        (SA_DIR / "ca.crt").write_bytes(Path(local_plane.ca).read_bytes())
        (SA_DIR / "namespace").write_text(release.namespace)
        yield SA_DIR
    finally:
        for f in ("token", "ca.crt", "namespace"):
            (SA_DIR / f).unlink(missing_ok=True)
        for d in created:   # deepest first
            d.rmdir()


@pytest.mark.timeout(90)
def test_in_cluster_config(serviceaccount_files, local_plane, kube, namespace, tmp_path):
    """As the chart's pod runs it: in-cluster config, all namespaces (no GREENML_NAMESPACE)."""
    host, port = local_plane.server.removeprefix("https://").rsplit(":", 1)
    env = with_system_bundle(env_for(tmp_path, None, None, [400.0] * 300))
    env.update({"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port})
    env["HOME"] = str(tmp_path)   # no ~/.kube/config to fall back on

    async def scenario():
        with run_operator(tmp_path, env) as op:
            await job_and_plan(kube, namespace, "incluster", op)
            assert_never_denied(op)

    asyncio.run(scenario())


# ------------------------------------------------------------------ every kubeconfig user
@contextmanager
def static_user_bound(kube: Kube, cluster_role: str) -> Iterator[None]:
    """The static-token user has no RBAC of its own: bind it to the chart's ClusterRole."""
    name = f"greenml-e2e-static-{uuid.uuid4().hex[:6]}"
    rbac = "rbac.authorization.k8s.io/v1"
    kube.request("POST", path_for(rbac, "clusterrolebindings"), "bind the static user", body={
        "apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": STATIC_TOKEN_USER}]})
    try:
        yield
    finally:
        kube.request("DELETE", path_for(rbac, "clusterrolebindings", None, name), "unbind the static user")


def user_entry(kind: str, tmp: Path, plane, token: str) -> dict[str, Any]:
    if kind == "client-certificate":
        crt, key = plane.pki["admin"]
        return {"client-certificate": str(crt), "client-key": str(key)}
    if kind == "token":
        return {"token": plane.static_token}
    if kind == "tokenFile":
        # as `kubectl create token SA > file` writes it: with a trailing newline
        (tmp / "sa.token").write_text(token + "\n")
        return {"tokenFile": str(tmp / "sa.token")}
    if kind == "exec":
        (tmp / "sa.token").write_text(token)
        script = tmp / "credential.sh"
        script.write_text(f"""#!/bin/sh
echo "$KUBERNETES_EXEC_INFO" >> "{tmp / 'exec-calls'}"
printf '{{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{{"token":"%s"}}}}\\n' \\
  "$(cat "{tmp / 'sa.token'}")"
""")
        script.chmod(0o755)
        return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script),
                         "interactiveMode": "Never"}}
    raise AssertionError(kind)


def exec_calls(tmp: Path) -> int:
    calls = tmp / "exec-calls"
    return calls.read_text().count("ExecCredential") if calls.exists() else 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["client-certificate", "token", "tokenFile", "exec"])
def test_every_kind_of_kubeconfig_user(kind, local_plane, release, operator_token, kube, namespace, tmp_path):
    kubeconfig = kubeconfig_for(tmp_path / f"{kind}.kubeconfig", user_entry(kind, tmp_path, local_plane,
                                                                              operator_token))
    # the reference client (kubectl, client-go) reads the kubeconfig as the identity meant
    who = run_tool(_tool("kubectl"), "--kubeconfig", str(kubeconfig), "auth", "whoami",
                   "-o", "jsonpath={.status.userInfo.username}").stdout
    sa = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    assert who == {"client-certificate": who, "token": STATIC_TOKEN_USER}.get(kind, sa)
    env = env_for(tmp_path, namespace, kubeconfig, [400.0] * 300)
    calls_before = exec_calls(tmp_path)

    async def scenario():
        with run_operator(tmp_path, env) as op:
            await job_and_plan(kube, namespace, "auth", op)
            assert_never_denied(op)

    if kind == "token":
        with static_user_bound(kube, release.cluster_role):
            asyncio.run(scenario())
    else:
        asyncio.run(scenario())
    if kind == "exec":   # the plugin was what authenticated: the operator's client and kopf's login
        assert exec_calls(tmp_path) - calls_before >= 2


# ------------------------------------------------------------------ what a user reads
@pytest.fixture(scope="module")
def planned_namespace(kube, crds, tmp_path_factory) -> Iterator[str]:
    """A namespace with a planned TrainingJob and an InferenceBudget with status (the operator
    ran as the admin until both were written, then stopped)."""
    tmp = tmp_path_factory.mktemp("planned")
    ns = create_namespace(kube, "greenml-e2e-read")
    env = env_for(tmp, ns, Path(os.environ["KUBECONFIG"]), [400.0] * 300)
    kube.request("POST", path_for("apps/v1", "deployments", ns), "create Deployment", body=chat_deployment(ns))

    async def scenario():
        with run_operator(tmp, env) as op:
            kube.request("POST", path_for(*IB, ns), "create InferenceBudget", body=budget(ns))
            await job_and_plan(kube, ns, "llm", op)
            await wait_for("the budget's status", lambda: status_of(kube, IB, ns, "chat-budget").get("activeVariant"),
                           op=op, timeout=30)

    try:
        asyncio.run(scenario())
        yield ns
    finally:
        delete_namespace(kube, ns)


def table(text: str) -> list[dict[str, str]]:
    """kubectl's table output as rows of {HEADER: value}, cut at the header's column starts."""
    header, *lines = text.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    return [{n: line[a:b].strip() for n, a, b in zip(names, starts, starts[1:] + [None])} for line in lines]


@pytest.mark.timeout(60)
def test_kubectl_get_prints_the_plan_as_timestamps(planned_namespace, kube):
    ns = planned_namespace
    text = kubectl("get", "trainingjobs,inferencebudgets", "-n", ns)
    assert "<invalid>" not in text, text
    tj_text, ib_text = text.strip().split("\n\n")
    st = status_of(kube, TJ, ns, "llm")
    (row,) = table(tj_text)
    assert row["NAME"].endswith("/llm")
    assert (row["PHASE"], row["START"], row["DEADLINE"]) == (st["phase"], st["plan"]["plannedStart"], st["deadline"])
    for stamp in (row["START"], row["DEADLINE"]):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp), stamp
    assert float(row["SAVINGS%"]) == pytest.approx(st["plan"]["savingsPercent"], abs=0.01)
    (wide,) = table(kubectl("get", "trainingjobs", "-n", ns, "-o", "wide"))
    assert (wide["JOB"], wide["ZONE"]) == (st["jobName"], st["zone"])
    (ib,) = table(ib_text)
    ib_st = status_of(kube, IB, ns, "chat-budget")
    assert (ib["TARGET"], ib["VARIANT"]) == ("chat", ib_st["activeVariant"])


@pytest.mark.timeout(60)
def test_greenml_report_reads_the_cluster_with_requests_ca_bundle_set(planned_namespace):
    """`greenml report` (the CLI command that reads the cluster) with REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE naming a bundle without the cluster's CA."""
    env = with_system_bundle({k: v for k, v in os.environ.items() if not k.startswith("GREENML_")})

    def report(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "greenml", "report", "-n", planned_namespace, *args],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc

    data = json.loads(report("--format", "json").stdout)
    assert data["source"].startswith("cluster https://")
    assert {(w["kind"], w["name"]) for w in data["workloads"]} == {("TrainingJob", "llm"),
                                                                     ("InferenceBudget", "chat-budget")}
    assert [n["namespace"] for n in data["namespaces"]] == [planned_namespace]
    text = report().stdout
    assert planned_namespace in text and "llm" in text and "chat-budget" in text


# ------------------------------------------------------------------ uninstall (last)
def test_uninstall_keeps_the_crds_and_the_custom_resources(release, kube, local_plane, namespace):
    """helm uninstall removes the operator's identity, not the CRDs (crds.keep) nor users' objects."""
    kube.request("POST", path_for(*TJ, namespace), "create TrainingJob", body=training_job("kept", namespace))
    run_tool(_tool("helm"), "uninstall", RELEASE, "-n", RELEASE_NS, "--kubeconfig", os.environ["KUBECONFIG"],
             "--wait")
    assert kube.get("v1", "serviceaccounts", release.namespace, release.service_account) is None
    assert kube.get("rbac.authorization.k8s.io/v1", "clusterroles", None, release.cluster_role) is None
    for name in ("trainingjobs.greenml.io", "inferencebudgets.greenml.io"):
        assert kube.get("apiextensions.k8s.io/v1", "customresourcedefinitions", None, name) is not None
    assert kube.get(*TJ, namespace, "kept") is not None
    # ... and deleting them afterwards needs no operator: no finalizer of greenml's holds them
    assert not kube.get(*TJ, namespace, "kept")["metadata"].get("finalizers")
    kube.request("DELETE", f"/api/v1/namespaces/{namespace}", "delete namespace")
    deadline = time.monotonic() + 90
    while kube.get("v1", "namespaces", None, namespace) is not None:
        assert time.monotonic() < deadline, f"namespace {namespace} still there 90 s after helm uninstall + delete"
        time.sleep(0.5)
