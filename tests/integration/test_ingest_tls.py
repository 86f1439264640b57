"""`traverz ingest --tls-cert F --tls-key K` serves HTTPS (and only HTTPS) with that certificate."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import ssl
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.settings import TOPIC_PINGS, Settings
from tests.integration.test_ingest import auth, device, end_offsets, ping, pings_since, run, seqs, spot
from tests.support.procs import Proc, Stack

pytestmark = pytest.mark.integration


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "traverz-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def wait_https(proc: Proc, client: httpx.Client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, proc.output()[-3000:]
        with contextlib.suppress(httpx.TransportError):
            if client.get("/readyz").status_code == 200:
                return
        time.sleep(0.25)
    raise AssertionError(f"no HTTPS on {proc.port}:\n{proc.output()[-3000:]}")


def test_ingest_over_https_with_a_verified_certificate(stack: Stack, settings: Settings, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    proc = stack.start(
        "ingest-tls", "ingest", "--tls-cert", str(cert), "--tls-key", str(key), port_var="TRAVERZ_INGEST_PORT"
    )
    trust = ssl.create_default_context(cafile=str(cert))
    base = f"https://127.0.0.1:{proc.port}"
    mark = run(end_offsets(settings.bootstrap, TOPIC_PINGS))
    dev = device("tls")
    lat, lon = spot()
    with httpx.Client(base_url=base, verify=trust, timeout=10) as https:
        wait_https(proc, https)
        assert https.get("/healthz").json() == {"status": "ok"}
        r = https.post("/v1/pings", json=[ping(1, lat, lon), ping(2, lat, lon)], headers=auth(settings, dev))
        assert r.status_code == 202 and r.json() == {"accepted": 2, "rejected": []}
        assert r.http_version == "HTTP/1.1"
    assert seqs(run(pings_since(settings.bootstrap, mark, [dev])), dev) == [1, 2]

    # plain HTTP on the TLS port gets no answer
    with httpx.Client(timeout=5) as plain, pytest.raises(httpx.TransportError):
        plain.post(f"http://127.0.0.1:{proc.port}/v1/pings", json=[ping(3, lat, lon)], headers=auth(settings, dev))
    # a client that does not trust the certificate refuses the connection
    with httpx.Client(timeout=5) as default, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        default.get(base + "/healthz")
    # and the proxy is still there
    with httpx.Client(base_url=base, verify=trust, timeout=10) as https:
        assert https.get("/healthz").status_code == 200
    assert proc.popen.poll() is None
    assert seqs(run(pings_since(settings.bootstrap, mark, [dev])), dev) == [1, 2]
