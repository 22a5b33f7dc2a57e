"""Credentials of a deployment: a CA and the SuperLink certificate it signs, SuperNode auth
key pairs, and the secret a SuperNode shares with its long-lived ClientApp."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_certificates(directory: Path, hosts: Sequence[str], days: int = 365) -> list[Path]:
    """A CA and a SuperLink certificate it signs, valid for `hosts` (names or IPs).

    SuperNodes and the CLI verify the SuperLink against ca.crt, so every address they dial
    must be one of the certificate's SANs.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcoop"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    def san(host: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedcoop CA"))
        .issuer_name(name("fedcoop CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(x509), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName([san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    key_format = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    files = {
        "ca.crt": ca.public_bytes(pem),
        "ca.key": ca_key.private_bytes(pem, *key_format),
        "server.crt": server.public_bytes(pem),
        "server.key": server_key.private_bytes(pem, *key_format),
    }
    return [_write(directory / f, data, secret=f.endswith(".key")) for f, data in files.items()]


def _ca_usage(x509: Any) -> Any:
    """Key usage of a CA that signs certificates and nothing else."""
    unused = ["content_commitment", "key_encipherment", "data_encipherment", "key_agreement"]
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
        **dict.fromkeys(unused, False),
    )


def write_node_keys(directory: Path, nodes: int) -> list[Path]:
    """`nodes` SuperNode auth key pairs (OpenSSH EC P-384, the format Flower 1.41 reads):
    supernode-<i>.key stays on device i, supernode-<i>.pub is registered with the SuperLink."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        paths.append(_write(directory / f"supernode-{i}.key", private, secret=True))
        paths.append(_write(directory / f"supernode-{i}.pub", public + b"\n"))
    return paths


def superexec_secret(state: Path, partition_id: int) -> Path:
    """A fresh secret (mode 0600) that SuperNode `partition_id` and its long-lived ClientApp
    share, so that no other local process can take the SuperNode's tasks."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / f"superexec-{partition_id}.secret"
    return _write(path, secrets.token_bytes(32), secret=True).resolve()


def _write(path: Path, content: bytes, *, secret: bool = False) -> Path:
    """Write `content` to `path`, readable by its owner only when `secret`."""
    path.write_bytes(content)
    if secret:
        path.chmod(0o600)
    return path
