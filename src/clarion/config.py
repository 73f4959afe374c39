"""Settings from `CLARION_*` environment variables, checked once at start-up.

A bad setting stops the process with one line naming the variable (`ConfigError`), never a
traceback from deep inside a driver.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from urllib.parse import urlsplit

from clarion.vault import is_valid_key, new_key


class ConfigError(Exception):
    """A setting that cannot work; its message is shown to the operator as is."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str
    secret_key: str
    host: str
    port: int
    data_dir: Path
    # Where providers (SMS status callbacks) and devices (receipts) reach this server; None
    # means http://host:port, right for a laptop, wrong behind a proxy or a public name.
    public_url: str | None = None
    # How long a worker's claim on work lasts: a dead worker's work waits this long before
    # another takes it over. Far longer than any provider timeout, so a live send never
    # outlasts it; shorter only where crashes are provoked on purpose (tests).
    lease_seconds: float = 60.0
    # Whether tenants' destinations (callback URLs, ProviderUrl, SMTP/SMPP hosts, web-push
    # endpoints) may be private addresses (clarion.destinations); None when not set, which means
    # no, but under `clarion serve --sandbox`, whose emulators listen on 127.0.0.1.
    allow_private_destinations: bool | None = None
    # Private networks tenants' destinations may be in all the same (an internal SMTP relay).
    allowed_private_networks: tuple[IPv4Network | IPv6Network, ...] = ()

    def destinations_allowed(self, *, sandbox: bool) -> bool:
        """The setting if given, else on in the sandbox only."""
        if self.allow_private_destinations is None:
            return sandbox
        return self.allow_private_destinations


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    data_dir = Path(env.get("CLARION_DATA_DIR", "var"))
    database_url = env.get("CLARION_DATABASE_URL") or f"sqlite:///{data_dir / 'clarion.db'}"
    if not database_url.startswith(
        ("sqlite:", "sqlite+aiosqlite:", "postgresql:", "postgres:", "postgresql+asyncpg:")
    ):
        raise ConfigError(
            "CLARION_DATABASE_URL must start with sqlite:/// or postgresql:// "
            f"(got {database_url.split(':', 1)[0]!r})"
        )
    port_text = env.get("CLARION_PORT", "8080")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"CLARION_PORT must be a port number 1-65535 (got {port_text!r})")
    lease_text = env.get("CLARION_LEASE_SECONDS", "60")
    try:
        lease_seconds = float(lease_text)
    except ValueError:
        lease_seconds = 0.0
    if not lease_seconds > 0:
        raise ConfigError(f"CLARION_LEASE_SECONDS must be a number of seconds (got {lease_text!r})")
    public_url = env.get("CLARION_PUBLIC_URL") or None
    if public_url is not None:
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"CLARION_PUBLIC_URL must be an http(s) URL such as https://notify.example.com "
                f"(got {public_url!r})"
            )
        public_url = public_url.rstrip("/")
    return Settings(
        allow_private_destinations=_flag(env, "CLARION_ALLOW_PRIVATE_DESTINATIONS"),
        allowed_private_networks=_networks(env, "CLARION_ALLOWED_PRIVATE_NETWORKS"),
        public_url=public_url,
        database_url=database_url,
        secret_key=_secret_key(env, data_dir),
        host=env.get("CLARION_HOST", "127.0.0.1"),
        port=int(port_text),
        data_dir=data_dir,
        lease_seconds=lease_seconds,
    )


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    """A yes/no setting, strictly: a typo must not silently mean the default."""
    text = env.get(name)
    if text is None or text == "":
        return None
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ConfigError(f"{name} must be one of 1, true, yes, 0, false, no (got {text!r})")


def _networks(env: Mapping[str, str], name: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """Comma-separated CIDR networks (`10.0.0.25/32, fd00:1::/64`); host bits must be zero."""
    networks = []
    for item in env.get(name, "").split(","):
        if not item.strip():
            continue
        try:
            networks.append(ip_network(item.strip()))
        except ValueError as exc:
            raise ConfigError(
                f"{name} must be comma-separated networks such as 10.0.0.25/32,fd00:1::/64 ({exc})"
            ) from exc
    return tuple(networks)


def _secret_key(env: Mapping[str, str], data_dir: Path) -> str:
    """The configured key, else the one kept under the data directory, created on first run."""
    key = env.get("CLARION_SECRET_KEY")
    if key is not None:
        if not is_valid_key(key):
            raise ConfigError(
                "CLARION_SECRET_KEY must be 32 url-safe base64-encoded bytes "
                "(generate one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            )
        return key
    path = data_dir / "secret.key"
    if path.exists():
        key = path.read_text().strip()
        if not is_valid_key(key):
            raise ConfigError(
                f"{path} does not hold a valid key; restore it or set CLARION_SECRET_KEY"
            )
        return key
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = new_key()
        # Created owner-only from the first byte, never briefly readable by others.
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(key + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    return key
