"""Credentials and TLS trust of the Kubernetes client and the providers, on local HTTP(S) servers.

The bugs the real control plane found (e2e/test_install_e2e.py), pinned here without one:
bearer tokens live under ``api_key["BearerToken"]`` in kubernetes-client >= 36 (they were not
sent: every ServiceAccount request was anonymous); a ``tokenFile`` ending in a newline
made an invalid header; ``REQUESTS_CA_BUNDLE`` replaced the cluster's CA (requests lets it
override a Session's ``verify``). Providers, by contrast, must honour ``REQUESTS_CA_BUNDLE``
(their servers are public: the system or a proxy's bundle is the right trust).
"""
from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client

from greenml.kube import Kube, Transient
from greenml.kube.client import connection_info, load_configuration
from greenml.signals.base import SignalError
from greenml.signals.http import JsonClient
from greenml.signals.robust import RetryPolicy

BUNDLE_VARS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


# ------------------------------------------------------------------ a throwaway PKI
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(d: Path, cn: str) -> tuple[Path, object, x509.Certificate]:
    """A CA as urllib3 2 wants it (keyCertSign, a subject key identifier); its cert's path."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = d / f"{cn}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def issue_server_cert(d: Path, ca_key, ca_cert: x509.Certificate) -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1 signed by the CA; (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    crt, pem = d / "server.crt", d / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(_pem_key(key))
    return crt, pem


@pytest.fixture
def pki(tmp_path) -> dict[str, Path]:
    """Two unrelated CAs; the server's certificate is signed by ``server_ca``."""
    server_ca, key, cert = make_ca(tmp_path, "server-ca")
    other_ca, _, _ = make_ca(tmp_path, "other-ca")
    crt, pem = issue_server_cert(tmp_path, key, cert)
    return {"server_ca": server_ca, "other_ca": other_ca, "cert": crt, "key": pem}


# ------------------------------------------------------------------ a local server
@contextmanager
def serve(body: dict, tls: tuple[Path, Path] | None = None) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP(S) server on 127.0.0.1 answering every GET with ``body``; yields its URL and
    the headers of each request it got (the request target under ``:path``)."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append({**dict(self.headers), ":path": self.path})
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def configuration(host: str, api_key: dict[str, str] | None = None, ca: Path | None = None) -> client.Configuration:
    cfg = client.Configuration()
    cfg.host = host
    cfg.api_key = dict(api_key or {})
    if ca:
        cfg.ssl_ca_cert = str(ca)
    return cfg


# ------------------------------------------------------------------ the Kubernetes client: credentials
@pytest.mark.parametrize("api_key, sent", [
    ({"BearerToken": "Bearer x"}, "Bearer x"),              # kubernetes-client >= 36 (token, tokenFile, exec, in-cluster)
    ({"authorization": "Bearer old"}, "Bearer old"),        # older releases
    ({"BearerToken": "Bearer x\n"}, "Bearer x"),            # a tokenFile ending in a newline
    ({"BearerToken": "bearer in-cluster"}, "bearer in-cluster"),   # as the in-cluster loader writes it
    ({}, None),
])
def test_the_bearer_token_the_library_loaded_is_sent(api_key, sent):
    with serve({"kind": "Status"}) as (url, seen):
        Kube(configuration(url, api_key)).request("GET", "/version", "get version")
    assert seen[0].get("Authorization") == sent


def test_the_refresh_hook_runs_for_every_request():
    """Rotating ServiceAccount tokens and exec credentials: each request sends the current one."""
    tokens = iter(["Bearer one", "Bearer two"])
    cfg = configuration("http://unused")

    def refresh(c: client.Configuration) -> None:
        c.api_key["BearerToken"] = next(tokens)

    cfg.refresh_api_key_hook = refresh
    with serve({}) as (url, seen):
        cfg.host = url
        kube = Kube(cfg)
        kube.request("GET", "/a", "a")
        kube.request("GET", "/b", "b")
    assert [h["Authorization"] for h in seen] == ["Bearer one", "Bearer two"]


def write_kubeconfig(path: Path, server: str, user: dict, ca: Path | None = None) -> Path:
    cluster = {"server": server, **({"certificate-authority": str(ca)} if ca else {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


def test_a_token_file_written_by_kubectl_create_token_works(tmp_path):
    """`kubectl create token SA > file` ends the file in a newline; client-go trims it, so must we
    (the operator's client and, through connection_info, kopf's login)."""
    (tmp_path / "token").write_text("sa-token\n")
    with serve({}) as (url, seen):
        cfg = load_configuration(str(write_kubeconfig(tmp_path / "kc", url, {"tokenFile": str(tmp_path / "token")})))
        Kube(cfg).request("GET", "/api", "discovery")
    assert seen[0]["Authorization"] == "Bearer sa-token"
    info = connection_info(cfg)
    assert (info["scheme"], info["token"], info["server"]) == ("Bearer", "sa-token", url)


def test_connection_info_carries_every_credential_kopf_needs(tmp_path, pki):
    cfg = load_configuration(str(write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:6443", {
        "client-certificate": str(pki["cert"]), "client-key": str(pki["key"])}, ca=pki["server_ca"])))
    info = connection_info(cfg)
    assert info == {"server": "https://127.0.0.1:6443", "ca_path": str(pki["server_ca"]), "insecure": False,
                    "username": None, "password": None, "scheme": None, "token": None,
                    "certificate_path": str(pki["cert"]), "private_key_path": str(pki["key"])}


# ------------------------------------------------------------------ the Kubernetes client: TLS trust
@pytest.mark.parametrize("var", BUNDLE_VARS)
def test_the_cluster_ca_wins_over_a_ca_bundle_in_the_environment(monkeypatch, pki, var):
    """REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE naming another bundle neither breaks the cluster's
    CA nor widens the trust: the kubeconfig's CA decides, both ways."""
    for v in BUNDLE_VARS:
        monkeypatch.delenv(v, raising=False)
    with serve({"major": "1"}, tls=(pki["cert"], pki["key"])) as (url, _):
        monkeypatch.setenv(var, str(pki["other_ca"]))
        assert Kube(configuration(url, ca=pki["server_ca"])).request("GET", "/version", "get version") == {"major": "1"}
        monkeypatch.setenv(var, str(pki["server_ca"]))
        with pytest.raises(Transient, match="SSLError"):
            Kube(configuration(url, ca=pki["other_ca"])).request("GET", "/version", "get version")


# ------------------------------------------------------------------ providers: REQUESTS_CA_BUNDLE honoured
def provider(url: str, **kw) -> JsonClient:
    return JsonClient("test-provider", url, policy=RetryPolicy(attempts=1, timeout=5), sleep=lambda s: None, **kw)


def test_a_provider_over_https_verifies_against_requests_ca_bundle(monkeypatch, pki):
    body = {"zone": "DE", "carbonIntensity": 321}
    for v in BUNDLE_VARS:
        monkeypatch.delenv(v, raising=False)
    with serve(body, tls=(pki["cert"], pki["key"])) as (url, _):
        with pytest.raises(SignalError, match="TLS verification failed") as err:   # the default store lacks our CA
            provider(url).get("/v3/carbon-intensity/latest")
        assert err.value.reason == "Unavailable"
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["server_ca"]))
        assert provider(url).get("/v3/carbon-intensity/latest") == body
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["other_ca"]))
        with pytest.raises(SignalError, match="TLS verification failed"):
            provider(url).get("/v3/carbon-intensity/latest")
        # a bundle configured for the provider wins over the environment's
        assert provider(url, ca_bundle=str(pki["server_ca"])).get("/v3/carbon-intensity/latest") == body


# ------------------------------------------------------------------ proxies, read once
def test_the_proxy_environment_is_honoured_and_read_once(monkeypatch):
    """HTTPS_PROXY/HTTP_PROXY and NO_PROXY apply to the API server as before, but are read
    when the client is made (requests' trust_env looked them and ~/.netrc up on every call)."""
    for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with serve({"proxied": True}) as (proxy, seen):      # a forward proxy gets the absolute URI
        monkeypatch.setenv("HTTP_PROXY", proxy)
        kube = Kube(configuration("http://kube.invalid:6443"))
        assert kube.proxy == proxy
        monkeypatch.delenv("HTTP_PROXY")                 # read at construction: still proxied
        assert kube.request("GET", "/version", "version") == {"proxied": True}
        assert [h[":path"] for h in seen] == ["http://kube.invalid:6443/version"]
        assert "proxy-authorization" not in {k.lower() for k in seen[0]}
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "kube.invalid")
        with pytest.raises(Transient):                   # not through the proxy: the host does not resolve
            Kube(configuration("http://kube.invalid:6443")).request("GET", "/version", "version")
        assert len(seen) == 1
        # credentials in the proxy's URL go to the proxy (Basic), never into the request line
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.setenv("HTTP_PROXY", proxy.replace("http://", "http://u:p%40ss@"))
        authed = Kube(configuration("http://kube.invalid:6443"))
        monkeypatch.delenv("HTTP_PROXY")
        assert authed.request("GET", "/version", "version") == {"proxied": True}
        sent = {k.lower(): v for k, v in seen[1].items()}
        assert sent["proxy-authorization"] == "Basic " + base64.b64encode(b"u:p@ss").decode()
        assert seen[1][":path"] == "http://kube.invalid:6443/version"
