"""Configuration screens: services, credentials, and a service's bindings.

Form fields carry the API's own parameter names, so what a page submits is the API request it
makes (clarion.portal.inprocess) and the API's error message names the field to fix.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from clarion import addresses, sids
from clarion.api.services import (
    BOOLEAN_PARAMETERS,
    CREDENTIAL_PARAMETERS,
    PROTOCOL_VERSION_PARAMETERS,
    TEXT_PARAMETERS,
)
from clarion.credential_types import CHANNEL_CREDENTIAL_TYPES, TYPES
from clarion.errors import not_found
from clarion.portal.app import Portal, page
from clarion.store import bindings, credentials, services
from clarion.store.paging import PageRequest, PageResult

PAGE_SIZE = 50
# Service parameters edited as plain text; "" clears the setting.
SERVICE_TEXT = (
    *TEXT_PARAMETERS,
    "MessagingServiceSid",
    "DeliveryCallbackUrl",
    "Failover",
    *PROTOCOL_VERSION_PARAMETERS,
)
# Secrets that are files or JSON documents, edited in a text area.
MULTILINE_SECRETS = ("Certificate", "PrivateKey", "Secret")
CREDENTIAL_TYPE_NAMES = {
    "apn": "Apple Push Notification service",
    "fcm": "Firebase Cloud Messaging (service account)",
    "gcm": "Google Cloud Messaging (legacy)",
    "twilio-sms": "Twilio SMS",
    "smpp": "SMPP (SMS)",
    "messenger": "Facebook Messenger",
    "webpush": "Web push (VAPID)",
    "smtp": "E-mail (SMTP)",
}


def keyset(request: Request, size: int = PAGE_SIZE) -> PageRequest:
    """The page a list's `after`/`before` links ask for (ids; anything else is the first)."""
    for name, field in (("after", "after_id"), ("before", "before_id")):
        value = request.query_params.get(name, "")
        if value.isdigit() and len(value) < 19:
            return PageRequest(size=size, **{field: int(value)})
    return PageRequest(size=size)


def path_sid(portal: Portal, name: str, prefix: str) -> str:
    value = str(portal.request.path_params[name])
    if not sids.is_sid(value, prefix):
        raise not_found()
    return sids.normalize_sid(value)


# --- services --------------------------------------------------------------------------------


@page
async def service_list(portal: Portal) -> Response:
    result = await portal.read(
        lambda conn: services.list_page(
            conn, account_id=portal.account_id, friendly_name=None, page=keyset(portal.request)
        )
    )
    return portal.render("services.html", section="services", result=result)


def _service_values(row: Any) -> dict[str, str]:
    """A stored service as its form's field values."""
    values = {name: row[column] or "" for name, (column, _) in TEXT_PARAMETERS.items()}
    values |= {name: row[column] or "" for name, column in PROTOCOL_VERSION_PARAMETERS.items()}
    values |= {
        name: row[column.removesuffix("_id") + "_sid"] or ""
        for name, (column, _) in CREDENTIAL_PARAMETERS.items()
    }
    values |= {name: "true" if row[column] else "" for name, column in BOOLEAN_PARAMETERS.items()}
    values["MessagingServiceSid"] = row["messaging_service_sid"] or ""
    values["DeliveryCallbackUrl"] = row["delivery_callback_url"] or ""
    values["Failover"] = json.dumps(row["failover"]) if row["failover"] else ""
    return values


def _service_params(portal: Portal) -> list[tuple[str, str]]:
    form = portal.posted
    params = [(name, form.string(name, max_length=4096) or "") for name in SERVICE_TEXT]
    params += [(name, form.string(name, max_length=64) or "") for name in CREDENTIAL_PARAMETERS]
    params += [(name, "true" if form.has(name) else "false") for name in BOOLEAN_PARAMETERS]
    return params


async def _credential_choices(portal: Portal) -> dict[str, list[Any]]:
    """The account's credentials each service channel can use, by credential parameter."""
    result = await portal.read(
        lambda conn: credentials.list_page(
            conn, account_id=portal.account_id, page=PageRequest(size=1000)
        )
    )
    return {
        name: [row for row in result.rows if row["type"] in CHANNEL_CREDENTIAL_TYPES[channel]]
        for name, (_, channel) in CREDENTIAL_PARAMETERS.items()
    }


async def _service_form(
    portal: Portal, *, sid: str | None, values: dict[str, str], error: str | None, status: int
) -> Response:
    return portal.render(
        "service_form.html",
        status=status,
        section="services",
        sid=sid,
        values=values,
        error=error,
        choices=await _credential_choices(portal),
        credential_parameters=CREDENTIAL_PARAMETERS,
        protocol_parameters=PROTOCOL_VERSION_PARAMETERS,
    )


@page
async def service_new(portal: Portal) -> Response:
    if portal.form is None:
        values = {"LogEnabled": "true", **dict.fromkeys(PROTOCOL_VERSION_PARAMETERS, "3")}
        return await _service_form(portal, sid=None, values=values, error=None, status=200)
    params = _service_params(portal)
    answer = await portal.api("POST", "/Services", params)
    if not answer.ok:
        values = {name: value for name, value in params if value != "false"}
        return await _service_form(
            portal, sid=None, values=values, error=answer.message, status=answer.status
        )
    return RedirectResponse(
        f"/portal/services/{answer.body['sid']}?done=service-created", status_code=303
    )


@page
async def service_edit(portal: Portal) -> Response:
    sid = path_sid(portal, "sid", sids.SERVICE)
    if portal.form is None:
        row = await portal.read(
            lambda conn: services.get(conn, account_id=portal.account_id, sid=sid)
        )
        return await _service_form(
            portal, sid=sid, values=_service_values(row), error=None, status=200
        )
    params = _service_params(portal)
    answer = await portal.api("POST", f"/Services/{sid}", params)
    if not answer.ok:
        values = {name: value for name, value in params if value != "false"}
        return await _service_form(
            portal, sid=sid, values=values, error=answer.message, status=answer.status
        )
    return RedirectResponse(f"/portal/services/{sid}?done=service-saved", status_code=303)


@page
async def service_delete(portal: Portal) -> Response:
    sid = path_sid(portal, "sid", sids.SERVICE)
    answer = await portal.api("DELETE", f"/Services/{sid}")
    if not answer.ok:
        return portal.render("error.html", status=answer.status, message=answer.message)
    return RedirectResponse("/portal/services?done=service-deleted", status_code=303)


# --- credentials -----------------------------------------------------------------------------


@page
async def credential_list(portal: Portal) -> Response:
    result = await portal.read(
        lambda conn: credentials.list_page(
            conn, account_id=portal.account_id, page=keyset(portal.request)
        )
    )
    return portal.render(
        "credentials.html",
        section="credentials",
        result=result,
        type_names=CREDENTIAL_TYPE_NAMES,
    )


def _credential_form(
    portal: Portal,
    *,
    type_name: str,
    sid: str | None,
    values: dict[str, str],
    error: str | None,
    status: int = 200,
) -> Response:
    kind = TYPES[type_name]
    return portal.render(
        "credential_form.html",
        status=status,
        section="credentials",
        sid=sid,
        type_name=type_name,
        type_names=CREDENTIAL_TYPE_NAMES,
        settings=kind.settings,
        secrets=kind.secrets,
        multiline=MULTILINE_SECRETS,
        values=values,
        error=error,
    )


def _credential_params(portal: Portal, type_name: str) -> list[tuple[str, str]]:
    """The submitted fields that have a value: an empty secret keeps the stored one."""
    form = portal.posted
    params = [("FriendlyName", form.string("FriendlyName", max_length=64) or "")]
    for name in TYPES[type_name].parameters:
        value = form.string(name, max_length=64 * 1024)
        if value:
            params.append((name, value))
    if type_name == "apn":
        params.append(("Sandbox", "true" if form.has("Sandbox") else "false"))
    return params


def _public_values(params: list[tuple[str, str]], type_name: str) -> dict[str, str]:
    """What a form may show again after an error: never a secret."""
    secret = set(TYPES[type_name].secrets)
    return {name: value for name, value in params if name not in secret and value != "false"}


@page
async def credential_new(portal: Portal) -> Response:
    if portal.form is None:
        type_name = portal.request.query_params.get("type", "")
        if type_name not in TYPES:
            return portal.render(
                "credential_type.html", section="credentials", type_names=CREDENTIAL_TYPE_NAMES
            )
        return _credential_form(portal, type_name=type_name, sid=None, values={}, error=None)
    type_name = portal.posted.string("Type", max_length=32) or ""
    if type_name not in TYPES:
        return RedirectResponse("/portal/credentials/new", status_code=303)
    params = [("Type", type_name), *_credential_params(portal, type_name)]
    answer = await portal.api("POST", "/Credentials", params)
    if not answer.ok:
        return _credential_form(
            portal,
            type_name=type_name,
            sid=None,
            values=_public_values(params, type_name),
            error=answer.message,
            status=answer.status,
        )
    return RedirectResponse(
        f"/portal/credentials/{answer.body['sid']}?done=credential-created", status_code=303
    )


@page
async def credential_edit(portal: Portal) -> Response:
    sid = path_sid(portal, "sid", sids.CREDENTIAL)
    row = await portal.read(
        lambda conn: credentials.get(conn, account_id=portal.account_id, sid=sid)
    )
    type_name = row["type"]
    if portal.form is None:
        values = {name: str(value) for name, value in row["settings"].items()}
        values["FriendlyName"] = row["friendly_name"] or ""
        if row["sandbox"]:
            values["Sandbox"] = "true"
        return _credential_form(portal, type_name=type_name, sid=sid, values=values, error=None)
    params = _credential_params(portal, type_name)
    answer = await portal.api("POST", f"/Credentials/{sid}", params)
    if not answer.ok:
        return _credential_form(
            portal,
            type_name=type_name,
            sid=sid,
            values=_public_values(params, type_name),
            error=answer.message,
            status=answer.status,
        )
    return RedirectResponse(f"/portal/credentials/{sid}?done=credential-saved", status_code=303)


@page
async def credential_delete(portal: Portal) -> Response:
    sid = path_sid(portal, "sid", sids.CREDENTIAL)
    answer = await portal.api("DELETE", f"/Credentials/{sid}")
    if not answer.ok:
        return portal.render("error.html", status=answer.status, message=answer.message)
    return RedirectResponse("/portal/credentials?done=credential-deleted", status_code=303)


# --- bindings --------------------------------------------------------------------------------

BINDING_FILTERS = ("identity", "address", "tag", "type", "status")


@page
async def binding_search(portal: Portal) -> Response:
    service_sid = path_sid(portal, "sid", sids.SERVICE)
    query = portal.request.query_params
    filters = {name: query.get(name, "").strip()[:256] for name in BINDING_FILTERS}
    binding_type = filters["type"] if filters["type"] in addresses.BINDING_TYPES else None
    status = filters["status"]
    active = {"active": True, "inactive": False}.get(status)

    def load(conn: Connection) -> tuple[Any, PageResult, dict[int, list[str]]]:
        service = services.get(conn, account_id=portal.account_id, sid=service_sid)
        result, tags = bindings.search_page(
            conn,
            service_id=service["id"],
            identity_prefix=filters["identity"] or None,
            address_prefix=filters["address"] or None,
            tag=filters["tag"] or None,
            binding_type=binding_type,
            active=active,
            page=keyset(portal.request),
        )
        return service, result, tags

    service, result, tags = await portal.read(load)
    return portal.render(
        "bindings.html",
        section="services",
        service=service,
        result=result,
        tags=tags,
        filters=filters,
        binding_types=addresses.BINDING_TYPES,
        filter_query=[(name, value) for name, value in filters.items() if value],
    )


@page
async def binding_delete(portal: Portal) -> Response:
    service_sid = path_sid(portal, "sid", sids.SERVICE)
    binding_sid = path_sid(portal, "binding", sids.BINDING)
    answer = await portal.api("DELETE", f"/Services/{service_sid}/Bindings/{binding_sid}")
    if not answer.ok:
        return portal.render("error.html", status=answer.status, message=answer.message)
    return RedirectResponse(
        f"/portal/services/{service_sid}/bindings?done=binding-deleted", status_code=303
    )


ROUTES = [
    Route("/services", service_list, methods=["GET"]),
    Route("/services/new", service_new, methods=["GET", "POST"]),
    Route("/services/{sid}", service_edit, methods=["GET", "POST"]),
    Route("/services/{sid}/delete", service_delete, methods=["POST"]),
    Route("/services/{sid}/bindings", binding_search, methods=["GET"]),
    Route("/services/{sid}/bindings/{binding}/delete", binding_delete, methods=["POST"]),
    Route("/credentials", credential_list, methods=["GET"]),
    Route("/credentials/new", credential_new, methods=["GET", "POST"]),
    Route("/credentials/{sid}", credential_edit, methods=["GET", "POST"]),
    Route("/credentials/{sid}/delete", credential_delete, methods=["POST"]),
]
