"""Throwaway PKI for the realk8s control plane, made with openssl at session start.

One CA signs the API server's serving certificate and every client certificate (admin, controller-manager,
scheduler, the kubelet's node identity); a separate key pair signs service-account tokens. Keys are ECDSA P-256:
quick to generate on a loaded machine and accepted by every component.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Every credential the control plane needs, under one directory."""

    ca: CertPair
    serving: CertPair
    service_account_key: Path
    service_account_pub: Path
    directory: Path

    def client(self, name: str, common_name: str, organization: str | None = None) -> CertPair:
        """A client certificate for ``common_name`` (in group ``organization``), signed by the CA."""
        subject = f"/CN={common_name}" + (f"/O={organization}" if organization else "")
        return _signed(self.directory, name, subject, self.ca, extensions="extendedKeyUsage=clientAuth")


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")


def _key(path: Path) -> Path:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    return path


def _signed(directory: Path, name: str, subject: str, ca: CertPair, extensions: str) -> CertPair:
    key = _key(directory / f"{name}.key")
    csr, cert, ext = directory / f"{name}.csr", directory / f"{name}.crt", directory / f"{name}.ext"
    ext.write_text(extensions + "\n", encoding="ascii")
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return CertPair(cert=cert, key=key)


def make_pki(directory: Path) -> Pki:
    """A CA, the API server's serving pair (127.0.0.1, localhost, kubernetes.default.svc) and the SA key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key(directory / "ca.key")
    ca_cert = directory / "ca.crt"
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(ca_key),
        "-subj",
        "/CN=realk8s-ca",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        str(ca_cert),
    )
    ca = CertPair(cert=ca_cert, key=ca_key)
    serving = _signed(
        directory,
        "apiserver",
        "/CN=kube-apiserver",
        ca,
        extensions=(
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        ),
    )
    sa_key = _key(directory / "sa.key")
    sa_pub = directory / "sa.pub"
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    return Pki(ca=ca, serving=serving, service_account_key=sa_key, service_account_pub=sa_pub, directory=directory)
