"""Start and stop a real Kubernetes control plane on 127.0.0.1 for the e2e suite.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, built from the Go
modules pinned in this folder (``build.sh``), with generated PKI, RBAC authorization,
ServiceAccount tokens, a static token and fake GPU nodes whose pods kwok schedules,
runs and completes. Kueue (``ControlPlane.kueue``) is optional: only the tests that ask for
it start it.

    python -m e2e.cluster.controlplane up [--dir DIR]   # prints KUBECONFIG=…, runs until Ctrl-C

The pytest session fixture in ``e2e/conftest.py`` uses :func:`start`.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
STATIC_TOKEN_USER = "e2e-static-user"
#: annotation on a pod (set in a Job's pod template): how long kwok keeps it Running
#: before it completes, e.g. "20s". Pods without it run until deleted.
RUN_FOR = "e2e.greenml.io/run-for"
REGION_LABEL = "topology.kubernetes.io/region"
#: Kueue (optional): the namespaces whose batch/v1 Jobs it manages carry this label; its Job
#: webhooks see only those, so a Kueue that is stopped or never started blocks no other test
KUEUE_MANAGED_LABEL = "e2e.greenml.io/kueue"
KUEUE_NAMESPACE = "kueue-system"
KUEUE_FRAMEWORKS = ("batch/job",)
#: where Kueue reads its metrics serving certificate when its internal cert management is
#: off — a fixed path in Kueue v0.15 (cmd/kueue/main.go), not configurable
KUEUE_METRICS_CERTS = Path("/etc/kueue/metrics/certs")
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"


class ControlPlaneError(RuntimeError):
    pass


# ------------------------------------------------------------------ build
def build(log=sys.stderr) -> Path:
    """Run build.sh (a no-op when the cache is current); the directory with the binaries."""
    proc = subprocess.run(["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, stderr=log, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"building the control plane failed (exit {proc.returncode}); see e2e/cluster/build.sh")
    return Path(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ PKI
def _pki(d: Path) -> dict[str, Any]:
    """A CA (keyCertSign, subject key identifier: urllib3 2 verifies strictly), the API
    server's serving cert, client certs, the ServiceAccount signing key, a static token."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k, path: Path) -> Path:
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        path.chmod(0o600)
        return path

    def write_cert(c, path: Path) -> Path:
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return path

    def name(cn: str, org: str | None = None):
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = key()
    ca_name = name("greenml-e2e-ca")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    def leaf(cn: str, org: str | None, server: bool):
        k = key()
        b = (x509.CertificateBuilder().subject_name(name(cn, org)).issuer_name(ca_name).public_key(k.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False,
                                          crl_sign=False, content_commitment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"), x509.DNSName("kubernetes.default.svc.cluster.local"),
                x509.IPAddress(ipaddress.ip_address(HOST)), x509.IPAddress(ipaddress.ip_address(SERVICE_IP))]),
                critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"ca": write_cert(ca, d / "ca.crt"), "ca_key": write_key(ca_key, d / "ca.key")}
    k, c = leaf("kube-apiserver", None, True)
    out["server"] = (write_cert(c, d / "apiserver.crt"), write_key(k, d / "apiserver.key"))
    # Kueue's webhook server (started only by the tests that ask for it: ControlPlane.kueue)
    k, c = leaf("kueue-webhook", None, True)
    out["kueue-webhook"] = (write_cert(c, d / "kueue-webhook.crt"), write_key(k, d / "kueue-webhook.key"))
    # infrastructure components act as system:masters: RBAC is what we test for the operator, not for them
    for who, cn, org in (("admin", "e2e-admin", "system:masters"),
                         ("controller-manager", "system:kube-controller-manager", "system:masters"),
                         ("scheduler", "system:kube-scheduler", "system:masters"),
                         ("kwok", "kwok-controller", "system:masters"),
                         ("kueue", "kueue-controller-manager", "system:masters")):
        k, c = leaf(cn, org, False)
        out[who] = (write_cert(c, d / f"{who}.crt"), write_key(k, d / f"{who}.key"))
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out["sa_key"] = write_key(sa, d / "sa.key")
    (d / "sa.pub").write_bytes(sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    out["sa_pub"] = d / "sa.pub"
    token = os.urandom(16).hex()
    (d / "tokens.csv").write_text(f"{token},{STATIC_TOKEN_USER},e2e-static-uid,\n")
    (d / "tokens.csv").chmod(0o600)
    out["tokens"] = d / "tokens.csv"
    out["static_token"] = token
    return out


def kubeconfig(server: str, ca: Path, user: dict[str, Any], name: str = "greenml-e2e") -> dict[str, Any]:
    """A kubeconfig document for one user entry (client cert, token, tokenFile, exec …)."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}]}


def write_kubeconfig(path: Path, server: str, ca: Path, user: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(kubeconfig(server, ca, user)))
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------ kwok stages
def _stages() -> list[dict[str, Any]]:
    """kwok stages: fake nodes become Ready and heartbeat; scheduled pods start Running at
    once; pods of a Job carrying the RUN_FOR annotation succeed after that long; deleted
    pods go."""
    def stage(name, kind, selector, nxt, delay=None):
        spec = {"resourceRef": {"apiGroup": "v1", "kind": kind}, "selector": {"matchExpressions": selector}, "next": nxt}
        if delay:
            spec["delay"] = delay
        return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}

    alive = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    node_conditions = """
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ Now | Quote }}
  lastTransitionTime: {{ Now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
"""
    node_init = node_conditions + """
addresses:
- address: {{ NodeIP }}
  type: InternalIP
allocatable:
{{ with .status.allocatable }}
{{ YAML . 1 }}
{{ end }}
capacity:
{{ with .status.capacity }}
{{ YAML . 1 }}
{{ end }}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ NodePort }}
nodeInfo:
  architecture: amd64
  kubeletVersion: fake
  kubeProxyVersion: fake
  operatingSystem: linux
phase: Running
"""
    pod_running = """
{{ $now := Now }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: PodScheduled}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state: {running: {startedAt: {{ $now | Quote }}}}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""
    pod_done = """
{{ $now := Now }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}
{{ end }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "False", type: Ready}
- {lastTransitionTime: {{ $now | Quote }}, status: "False", type: ContainersReady}
phase: Succeeded
"""
    run_for = f'.metadata.annotations["{RUN_FOR}"]'
    return [
        stage("node-initialize", "Node",
              [{"key": '.status.conditions.[] | select( .type == "Ready" ) | .status', "operator": "NotIn",
                "values": ["True"]}],
              {"statusTemplate": node_init}),
        stage("node-heartbeat", "Node",
              [{"key": '.status.conditions.[] | select( .type == "Ready" ) | .status', "operator": "In",
                "values": ["True"]}],
              {"statusTemplate": node_conditions},
              delay={"durationMilliseconds": 20000, "jitterDurationMilliseconds": 25000}),
        stage("pod-running", "Pod",
              [alive, {"key": ".spec.nodeName", "operator": "Exists"},
               {"key": ".status.podIP", "operator": "DoesNotExist"}],
              {"statusTemplate": pod_running}),
        stage("pod-complete", "Pod",
              [alive, {"key": ".status.phase", "operator": "In", "values": ["Running"]},
               {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]},
               {"key": run_for, "operator": "Exists"}],
              {"statusTemplate": pod_done},
              delay={"durationMilliseconds": 1000, "durationFrom": {"expressionFrom": run_for}}),
        stage("pod-delete", "Pod", [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
              {"finalizers": {"empty": True}, "delete": True}),
    ]


def fake_node(name: str, gpus: int, region: str) -> dict[str, Any]:
    """A Node kwok manages (annotation), with allocatable nvidia.com/gpu and a region label."""
    res = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                         "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", REGION_LABEL: region,
                                    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
            "spec": {}, "status": {"allocatable": res, "capacity": res}}


# ------------------------------------------------------------------ processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class ControlPlane:
    dir: Path
    bin: Path
    server: str = ""
    kubeconfig: Path = Path()
    ca: Path = Path()
    static_token: str = ""
    pki: dict[str, Any] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    started_s: float = 0.0
    kueue_url: str = ""        # https://127.0.0.1:<port> of Kueue's webhooks, once started
    kueue_started_s: float = 0.0
    kueue_port: int = 0        # kept across restarts: the CRDs' conversion webhook URL stays as it is

    # -- one component
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([str(self.bin / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {p.returncode}:\n{self.log_tail(name)}")

    def _wait(self, what: str, probe, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if probe():
                    return
            except Exception as exc:   # noqa: BLE001 - any failure is "not yet"
                last = exc
            time.sleep(0.2)
        raise ControlPlaneError(f"timed out waiting for {what} ({last})")

    def _get(self, path: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        admin_crt, admin_key = self.pki["admin"]
        ctx.load_cert_chain(str(admin_crt), str(admin_key))
        with urllib.request.urlopen(self.server + path, context=ctx, timeout=5) as r:
            return r.read()

    # -- whole plane
    def start(self, nodes: list[dict[str, Any]]) -> "ControlPlane":
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        pki = self.pki = _pki(self.dir / "pki")
        self.ca = pki["ca"]
        self.static_token = pki["static_token"]
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://{HOST}:{etcd_port}"
        self._spawn("etcd", [
            "--name=e2e", f"--data-dir={self.dir / 'etcd'}", f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}", f"--listen-peer-urls=http://{HOST}:{peer_port}",
            f"--initial-advertise-peer-urls=http://{HOST}:{peer_port}",
            f"--initial-cluster=e2e=http://{HOST}:{peer_port}", "--unsafe-no-fsync=true", "--log-level=warn",
            "--quota-backend-bytes=4294967296"])
        self._wait("etcd", lambda: urllib.request.urlopen(etcd_url + "/health", timeout=2).status == 200, 30)

        self.server = f"https://{HOST}:{api_port}"
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}", f"--bind-address={HOST}", f"--advertise-address={HOST}",
            f"--secure-port={api_port}", f"--tls-cert-file={pki['server'][0]}",
            f"--tls-private-key-file={pki['server'][1]}", f"--client-ca-file={self.ca}",
            "--authorization-mode=RBAC", f"--token-auth-file={pki['tokens']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki['sa_pub']}", f"--service-account-signing-key-file={pki['sa_key']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", f"--cert-dir={self.dir / 'apiserver-certs'}",
            "--allow-privileged=true", "--profiling=false", "--enable-priority-and-fairness=false",
            "--endpoint-reconciler-type=none", "--v=0"])
        admin = write_kubeconfig(self.dir / "admin.kubeconfig", self.server, self.ca,
                                 {"client-certificate": str(pki["admin"][0]), "client-key": str(pki["admin"][1])})
        self.kubeconfig = admin
        self._wait("kube-apiserver /readyz", lambda: self._get("/readyz") == b"ok", 60)

        for comp in ("controller-manager", "scheduler", "kwok"):
            write_kubeconfig(self.dir / f"{comp}.kubeconfig", self.server, self.ca,
                             {"client-certificate": str(pki[comp][0]), "client-key": str(pki[comp][1])})
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={self.dir / 'controller-manager.kubeconfig'}", "--leader-elect=false",
            f"--service-account-private-key-file={pki['sa_key']}", f"--root-ca-file={self.ca}",
            "--use-service-account-credentials=false", "--controllers=*,-nodeipam,-cloud-node-lifecycle",
            f"--bind-address={HOST}", f"--secure-port={free_port()}", "--profiling=false",
            "--concurrent-job-syncs=5", "--concurrent-gc-syncs=20", "--v=0"])
        self._spawn("kube-scheduler", [
            f"--kubeconfig={self.dir / 'scheduler.kubeconfig'}", "--leader-elect=false",
            f"--bind-address={HOST}", f"--secure-port={free_port()}", "--profiling=false", "--v=0"])
        stages = self.dir / "kwok.yaml"
        stages.write_text(yaml.safe_dump_all(_stages(), sort_keys=False))
        self._spawn("kwok", [
            f"--kubeconfig={self.dir / 'kwok.kubeconfig'}", f"--config={stages}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--cidr=10.0.64.0/18", f"--node-ip={HOST}", f"--server-address={HOST}:{free_port()}"])

        from greenml.kube import Kube
        from greenml.kube.client import load_configuration
        kube = Kube(load_configuration(str(admin)))
        for node in nodes:
            kube.request("POST", "/api/v1/nodes", "create Node", body=node)

        def nodes_ready() -> bool:
            items = kube.request("GET", "/api/v1/nodes", "list Nodes").get("items") or []
            ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True"
                                             for c in (n.get("status") or {}).get("conditions") or [])]
            return len(ready) == len(nodes)

        def default_sa() -> bool:   # the controller-manager's serviceaccount controller runs
            return kube.get("v1", "serviceaccounts", "default", "default") is not None

        self._wait("kwok nodes Ready", nodes_ready, 60)
        self._wait("the default ServiceAccount", default_sa, 60)
        self.started_s = time.monotonic() - t0
        return self

    # -- Kueue, optional (see the Kueue section below)
    def kueue(self, frameworks: tuple[str, ...] = KUEUE_FRAMEWORKS) -> str:
        """Start Kueue's manager out of cluster against this plane, once; its webhook URL.

        Its CRDs (from the pinned module's config/components/crd, with the conversion webhooks
        its kustomization enables) are applied, its Validating/MutatingWebhookConfigurations
        point at ``https://127.0.0.1:<port>`` by ``url`` with this plane's CA, and it serves
        them with a certificate from that CA. Ready when a dry-run ResourceFlavor passes
        through its webhooks."""
        if self.procs.get("kueue") is not None and self.procs["kueue"].poll() is None:
            return self.kueue_url
        t0 = time.monotonic()
        if not (self.bin / "kueue").exists():
            raise ControlPlaneError(f"no kueue binary in {self.bin}; e2e/cluster/build.sh builds it")
        conf_dir = self.bin / "kueue-config"
        d = self.dir / "kueue"
        (d / "certs").mkdir(parents=True, exist_ok=True)
        crt, key = self.pki["kueue-webhook"]
        for target in (d / "certs", KUEUE_METRICS_CERTS):
            try:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(crt, target / "tls.crt")
                shutil.copyfile(key, target / "tls.key")
            except OSError as exc:
                raise ControlPlaneError(f"Kueue reads its certificates from {target}: {exc}") from None
        port, health = self.kueue_port or free_port(), free_port()
        self.kueue_port, self.kueue_url = port, f"https://{HOST}:{port}"
        ca_bundle = base64.b64encode(self.ca.read_bytes()).decode()

        from greenml.kube import Conflict, Kube
        from greenml.kube.client import load_configuration
        kube = Kube(load_configuration(str(self.kubeconfig)))
        crds = kueue_crds(conf_dir / "crd", self.kueue_url, ca_bundle)
        for crd in crds:
            kube.apply("apiextensions.k8s.io/v1", "customresourcedefinitions", None, crd["metadata"]["name"], crd)
        try:
            kube.request("POST", "/api/v1/namespaces", "create namespace",
                         body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUEUE_NAMESPACE}})
        except Conflict:
            pass

        def established() -> bool:
            items = kube.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "list CRDs")["items"]
            ok = {c["metadata"]["name"] for c in items
                  if any(x["type"] == "Established" and x["status"] == "True"
                         for x in (c.get("status") or {}).get("conditions") or [])}
            return all(c["metadata"]["name"] in ok for c in crds)

        self._wait("Kueue's CRDs Established", established, 60)
        config = d / "config.yaml"
        config.write_text(yaml.safe_dump(kueue_configuration(port, health, d / "certs", frameworks)))
        write_kubeconfig(self.dir / "kueue.kubeconfig", self.server, self.ca,
                         {"client-certificate": str(self.pki["kueue"][0]), "client-key": str(self.pki["kueue"][1])})
        self._spawn("kueue", [f"--config={config}", f"--kubeconfig={self.dir / 'kueue.kubeconfig'}",
                              "--zap-log-level=info"])
        for hook in kueue_webhooks(conf_dir / "webhook" / "manifests.yaml", self.kueue_url, ca_bundle):
            plural = hook["kind"].lower() + "s"
            kube.apply("admissionregistration.k8s.io/v1", plural, None, hook["metadata"]["name"], hook)
        self._wait("Kueue /readyz", lambda: urllib.request.urlopen(f"http://{HOST}:{health}/readyz", timeout=2).status == 200, 90)

        def webhooks_answer() -> bool:   # through the API server: url, TLS and caBundle all work
            kube.request("POST", "/apis/kueue.x-k8s.io/v1beta2/resourceflavors", "dry-run ResourceFlavor",
                         body={"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                               "metadata": {"name": "e2e-probe"}}, params={"dryRun": "All"})
            # and the converted storage serves (429 "storage is (re)initializing" right after a CRD changed)
            kube.request("GET", "/apis/kueue.x-k8s.io/v1beta2/workloads", "list Workloads", params={"limit": "1"})
            return True

        self._wait("Kueue's webhooks", webhooks_answer, 60)
        self.kueue_started_s = time.monotonic() - t0
        return self.kueue_url

    def stop_kueue(self) -> None:
        """Stop Kueue and remove its webhook configurations (their failurePolicy is Fail)."""
        self._terminate("kueue")
        self.procs.pop("kueue", None)
        if not self.kueue_url:
            return
        from greenml.kube import Kube, NotFound
        from greenml.kube.client import load_configuration, path_for
        kube = Kube(load_configuration(str(self.kubeconfig)))
        for plural, name in KUEUE_WEBHOOK_CONFIGS:
            try:
                kube.request("DELETE", path_for("admissionregistration.k8s.io/v1", plural, None, name), f"delete {name}")
            except NotFound:
                pass
        self.kueue_url = ""

    def _terminate(self, name: str) -> None:
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def stop(self) -> None:
        for name in ("kueue", "kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            self._terminate(name)

    def __enter__(self) -> "ControlPlane":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------ Kueue (optional)
KUEUE_WEBHOOK_CONFIGS = (("mutatingwebhookconfigurations", "greenml-e2e-kueue-mutating"),
                         ("validatingwebhookconfigurations", "greenml-e2e-kueue-validating"))
#: API groups whose webhooks are installed: Kueue's own objects and the enabled frameworks'
#: (batch/job); the other frameworks' webhooks are not served by a Kueue without them
_KUEUE_WEBHOOK_GROUPS = {"kueue.x-k8s.io", "batch"}


def kueue_crds(crd_dir: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs from its module (config/components/crd/bases), with the conversion
    webhook its kustomization patches in (webhook_in_*.yaml) pointed at ``url``/convert."""
    kustomization = yaml.safe_load((crd_dir / "kustomization.yaml").read_text())
    converted = set()
    for patch in kustomization.get("patches") or []:
        doc = yaml.safe_load((crd_dir / patch["path"]).read_text())
        if ((doc.get("spec") or {}).get("conversion") or {}).get("strategy") == "Webhook":
            converted.add(doc["metadata"]["name"])
    crds = [yaml.safe_load((crd_dir / r).read_text()) for r in kustomization["resources"]]
    for crd in crds:
        if crd["metadata"]["name"] in converted:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "clientConfig": {"url": f"{url}/convert", "caBundle": ca_bundle},
                "conversionReviewVersions": ["v1"]}}
    return crds


def kueue_webhooks(manifests: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's Mutating/ValidatingWebhookConfigurations (config/components/webhook), reduced
    to Kueue's own objects and batch/v1 Jobs, called by ``url`` with this plane's CA; the Job
    webhooks only for namespaces labelled KUEUE_MANAGED_LABEL=true."""
    names = dict((plural[:-1], name) for plural, name in KUEUE_WEBHOOK_CONFIGS)
    out = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc:
            continue
        hooks = []
        for hook in doc["webhooks"]:
            groups = {g for rule in hook["rules"] for g in rule["apiGroups"]}
            if not groups <= _KUEUE_WEBHOOK_GROUPS:
                continue
            hook["clientConfig"] = {"url": url + hook["clientConfig"]["service"]["path"], "caBundle": ca_bundle}
            if "batch" in groups:
                hook["namespaceSelector"] = {"matchLabels": {KUEUE_MANAGED_LABEL: "true"}}
            hooks.append(hook)
        out.append({"apiVersion": doc["apiVersion"], "kind": doc["kind"],
                    "metadata": {"name": names[doc["kind"].lower()]}, "webhooks": hooks})
    return out


def kueue_configuration(webhook_port: int, health_port: int, cert_dir: Path,
                        frameworks: tuple[str, ...] = KUEUE_FRAMEWORKS) -> dict[str, Any]:
    """Kueue's manager configuration (config.kueue.x-k8s.io/v1beta2) for running out of cluster."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchLabels": {KUEUE_MANAGED_LABEL: "true"}},
        # its cert rotator would issue a certificate for <service>.<namespace>.svc only
        "internalCertManagement": {"enable": False},
        "webhook": {"host": HOST, "port": webhook_port, "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"{HOST}:{health_port}"},
        "metrics": {"bindAddress": f"{HOST}:{free_port()}"},
        "leaderElection": {"leaderElect": False},
        "integrations": {"frameworks": list(frameworks)},
        # the visibility API is an aggregated API server of its own: not needed here
        "featureGates": {"VisibilityOnDemand": False},
    }


DEFAULT_NODES = [fake_node("gpu-node-a", 4, "europe-west3"), fake_node("gpu-node-b", 4, "europe-west3")]


def start(workdir: Path, nodes: list[dict[str, Any]] | None = None, bindir: Path | None = None) -> ControlPlane:
    """Build (if needed) and start a control plane under ``workdir``; the caller stops it."""
    cp = ControlPlane(dir=workdir, bin=bindir or build())
    try:
        return cp.start(DEFAULT_NODES if nodes is None else nodes)
    except BaseException:
        cp.stop()
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m e2e.cluster.controlplane")
    ap.add_argument("command", choices=["build", "up"])
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "greenml-e2e-cluster")
    ap.add_argument("--kueue", action="store_true", help="start Kueue too (batch/job; label namespaces "
                    f"{KUEUE_MANAGED_LABEL}=true for it to manage their Jobs)")
    args = ap.parse_args(argv)
    if args.command == "build":
        print(build())
        return 0
    shutil.rmtree(args.dir, ignore_errors=True)
    cp = start(args.dir)
    if args.kueue:
        try:
            cp.kueue()
        except BaseException:
            cp.stop()
            raise
        print(f"Kueue up in {cp.kueue_started_s:.1f} s, webhooks at {cp.kueue_url}")
    print(f"control plane up in {cp.started_s:.1f} s\nexport KUBECONFIG={cp.kubeconfig}", flush=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
