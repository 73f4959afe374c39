"""What every API handler starts from: the authenticated account and the process's services."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.requests import Request

from clarion import errors, sids
from clarion.api.auth import Authenticator
from clarion.destinations import PERMISSIVE, DestinationPolicy
from clarion.store.accounts import Principal
from clarion.store.database import Database
from clarion.vault import Vault


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """Per-process objects the app is built with (`request.app.state.runtime`)."""

    database: Database
    vault: Vault
    authenticator: Authenticator
    # Called after a notification commits, so workers start at once instead of at their next
    # poll (an in-process event on SQLite, NOTIFY on PostgreSQL).
    on_enqueued: Callable[[], None] = lambda: None
    # Webhook secrets that live outside the database, by the credential SID their URL names
    # (the sandbox's Twilio account); nothing else is looked up without an account.
    webhook_tokens: Mapping[str, str] = field(default_factory=dict)
    # `clarion serve --sandbox`: the emulators' magic addresses are accepted.
    sandbox: bool = False
    # Which destinations tenants may give (callback URLs, ProviderUrl, hosts, web-push
    # endpoints): what is private without DNS is refused with a 400 (clarion.destinations).
    destinations: DestinationPolicy = PERMISSIVE


@dataclass(frozen=True, kw_only=True)
class Context:
    request: Request
    principal: Principal
    database: Database
    vault: Vault

    @property
    def account_id(self) -> int:
        return self.principal.account_id

    def url(self, path: str) -> str:
        """The absolute URL of an API path, on the host the caller used."""
        return f"{self.request.url.scheme}://{self.request.url.netloc}/v1{path}"

    def path_sid(self, name: str, prefix: str) -> str:
        """A SID from the URL; a malformed one is a resource that does not exist."""
        value = str(self.request.path_params[name])
        if not sids.is_sid(value, prefix):
            raise errors.not_found()
        return sids.normalize_sid(value)

    def path_text(self, name: str) -> str:
        """A free-text URL parameter (an identity, a segment), `/` and `%` included."""
        return unescape_segment(str(self.request.path_params[name]))

    def optional_path_text(self, name: str) -> str | None:
        return self.path_text(name) if name in self.request.path_params else None


def escape_segment(text: str) -> str:
    """One decoded URL segment with only `%` and `/` escaped (see api.app.EncodedSlashes)."""
    return text.replace("%", "%25").replace("/", "%2F")


def unescape_segment(text: str) -> str:
    return text.replace("%2F", "/").replace("%25", "%")


def allowed_url(request: Request, name: str, url: str | None) -> str | None:
    """`url`, unless its host is private as far as can be known without DNS and the process's
    destination policy refuses private destinations: then the 400 saying so."""
    problem = runtime(request).destinations.url_problem(url)
    if problem is not None:
        raise errors.invalid_parameter(name, problem)
    return url


def runtime(request: Request) -> Runtime:
    """The process's objects, for the few routes that authenticate callers another way."""
    found: Runtime = request.app.state.runtime
    return found


# Scope key under which the portal (clarion.portal) calls the API in-process for the account
# its session signed in as. Only server code builds ASGI scopes, so no request can set it.
SIGNED_IN = "clarion.signed_in"


async def authenticated(request: Request) -> Context:
    process = runtime(request)
    principal = request.scope.get(SIGNED_IN)
    if not isinstance(principal, Principal):
        principal = await process.authenticator(request)
    return Context(
        request=request, principal=principal, database=process.database, vault=process.vault
    )
