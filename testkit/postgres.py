"""A PostgreSQL server of a test's own, and the certificates to run it with TLS.

The machine's shared Postgres is never reconfigured by tests: a test that needs a server set up
differently (TLS on, TLS required, stopped and started) gets a private one here — ``initdb`` and
``pg_ctl`` from the Debian PostgreSQL packages, in a temporary directory, on a free loopback port,
with ``fsync`` off. As root (CI containers) the server runs as the ``postgres`` system user, since
PostgreSQL refuses to run as root.

Certificates are made with ``cryptography``: a CA, and a server certificate it signs for the host
names given, so ``sslmode=verify-full`` can be tested for real, and a second CA to be refused.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testkit.fixtures import free_port


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server binaries (``/usr/lib/postgresql/<major>/bin``)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@dataclass(frozen=True)
class KeyPair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def make_server_cert(ca: KeyPair, hosts: list[str]) -> KeyPair:
    """A server certificate signed by ``ca`` whose subjectAltName lists ``hosts`` (names or IPs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert, key)


class PrivatePostgres:
    """A PostgreSQL server in a temporary directory of its own: ``start()``, ``url()``, ``remove()``.

    With ``tls`` (a server :class:`KeyPair`) TLS is on; ``require_tls`` refuses plain TCP connections
    (``hostnossl … reject``), as a managed database does. Authentication is ``trust``: these tests
    are about the transport, and the server listens on loopback only.
    """

    def __init__(self, *, tls: KeyPair | None = None, require_tls: bool = False) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = binaries
        # Its own directory, not pytest's tmp_path: that one is private to root, and the server may
        # run as another user.
        self.directory = Path(tempfile.mkdtemp(prefix="tsp-private-pg-"))
        self.data = self.directory / "data"
        self.sockets = self.directory / "sockets"
        self.port = free_port()
        self.tls = tls
        self.require_tls = require_tls
        self._user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=self._user,
            cwd=self.directory,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")
        return result

    def start(self) -> PrivatePostgres:
        self.sockets.mkdir(exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for path in (self.directory, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "--auth=trust", "--username=postgres", "--no-sync", "-E", "UTF8"
        )
        options = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.sockets}'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 40",
        ]
        hba = ["local all all trust"]
        if self.tls is not None:
            cert, key = self.tls.write(self.data, "server")
            if self._user is not None:
                entry = pwd.getpwnam(self._user)
                for path in (cert, key):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            options += ["ssl = on", f"ssl_cert_file = '{cert}'", f"ssl_key_file = '{key}'"]
            hba.append("hostssl all all 127.0.0.1/32 trust")
        hba.append(
            "hostnossl all all 127.0.0.1/32 reject" if self.require_tls else "host all all 127.0.0.1/32 trust"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n" + "\n".join(options) + "\n")
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def url(self, host: str = "localhost", database: str = "postgres", **query: str) -> str:
        suffix = f"?{urlencode(query)}" if query else ""
        return f"postgresql://postgres@{host}:{self.port}/{database}{suffix}"

    def log(self) -> str:
        try:
            return (self.directory / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
