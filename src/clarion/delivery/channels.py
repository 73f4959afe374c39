"""Which channel adapter serves which credential type, built from the credential's parameters.

This is the composition root's `ChannelFactory` (clarion.delivery.channel_pool): it reads the
parameter names clarion.credential_types stores and hands each adapter exactly what it needs,
so the adapters themselves never see a credential row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from clarion import errors
from clarion.channels import fcm, messenger, smpp, twilio_sms
from clarion.channels.apns import ApnsChannel
from clarion.channels.base import Channel
from clarion.channels.email import EmailChannel
from clarion.channels.fcm import FcmChannel
from clarion.channels.messenger import MessengerChannel
from clarion.channels.smpp import DeliveryReceipt, SmppChannel
from clarion.channels.twilio_sms import TwilioSmsChannel
from clarion.channels.webpush import WebPushChannel
from clarion.credential_types import PROVIDER_URL
from clarion.delivery.channel_pool import ChannelFactory, ChannelUnavailableError, Credential
from clarion.delivery.provider_reports import ProviderReport
from clarion.destinations import PERMISSIVE, DestinationPolicy


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    """Where Clarion itself is reached by providers, for callbacks it asks them to make."""

    # e.g. https://notify.example.com; SMS status callbacks go to {public_url}/v1/Callbacks/…
    public_url: str
    # Where providers that report over the channel's own connection (SMPP receipts) are
    # heard: clarion.delivery.provider_reports.ProviderReports.submit; None ignores them.
    reports: Callable[[ProviderReport], None] | None = None
    # Whether credentials may aim channels at private addresses (ProviderUrl, Host) and web
    # pushes go to private endpoints; `clarion serve`/`worker` pass the operator's setting.
    destinations: DestinationPolicy = PERMISSIVE

    def sms_status_callback(self, credential_sid: str) -> str:
        return f"{self.public_url}/v1/Callbacks/Sms/{credential_sid}"

    def messenger_webhook(self, credential_sid: str) -> str:
        """The Callback URL of a Messenger credential's page webhook. Meta takes it once, in the
        app's dashboard, not per message: only the sandbox's emulator is given it by Clarion."""
        return f"{self.public_url}/v1/Callbacks/Messenger/{credential_sid}"


def factory(endpoints: Endpoints) -> ChannelFactory:
    def build(credential: Credential) -> Channel:
        builder = _BUILDERS.get(credential.type)
        if builder is None:
            raise ChannelUnavailableError(
                str(errors.INVALID_CREDENTIAL_TYPE),
                _UNSUPPORTED.get(
                    credential.type, f"Clarion cannot deliver with {credential.type} credentials"
                ),
            )
        return builder(credential, endpoints)

    return build


def _url(credential: Credential, default: str) -> str:
    """Where the provider's API is: the credential's ProviderUrl, else the real one."""
    return str(credential.settings.get(PROVIDER_URL) or default)


def _apns(credential: Credential, endpoints: Endpoints) -> Channel:
    settings, secret = credential.settings, credential.secret
    return ApnsChannel(
        private_key=secret["PrivateKey"],
        certificate=secret.get("Certificate"),
        key_id=settings.get("KeyId"),
        team_id=settings.get("TeamId"),
        bundle_id=settings.get("BundleId"),
        sandbox=bool(credential.sandbox),
        base_url=credential.settings.get(PROVIDER_URL),
        destinations=endpoints.destinations,
    )


def _fcm(credential: Credential, endpoints: Endpoints) -> Channel:
    return FcmChannel(
        service_account=json.loads(credential.secret["Secret"]),
        base_url=_url(credential, fcm.FCM_URL),
        destinations=endpoints.destinations,
    )


def _twilio_sms(credential: Credential, endpoints: Endpoints) -> Channel:
    settings = credential.settings
    return TwilioSmsChannel(
        account_sid=settings["AccountSid"],
        auth_token=credential.secret["AuthToken"],
        messaging_service_sid=settings.get("MessagingServiceSid"),
        from_=None if settings.get("MessagingServiceSid") else settings.get("From"),
        status_callback=endpoints.sms_status_callback(credential.sid),
        base_url=_url(credential, twilio_sms.TWILIO_URL),
        destinations=endpoints.destinations,
    )


def _messenger(credential: Credential, endpoints: Endpoints) -> Channel:
    return MessengerChannel(
        page_id=credential.settings["PageId"],
        page_access_token=credential.secret["PageAccessToken"],
        base_url=_url(credential, messenger.GRAPH_URL),
        destinations=endpoints.destinations,
    )


def _smpp(credential: Credential, endpoints: Endpoints) -> Channel:
    settings, sink = credential.settings, endpoints.reports

    def on_receipt(receipt: DeliveryReceipt) -> None:
        if sink is not None:
            sink(
                ProviderReport(
                    credential_sid=credential.sid,
                    channel="sms",
                    provider_ref=receipt.message_id,
                    status=receipt.status,
                    error_code=receipt.error_code,
                    error_message=receipt.error_message,
                )
            )

    return SmppChannel(
        host=settings["Host"],
        port=int(settings.get("Port") or smpp.DEFAULT_PORT),
        system_id=settings["SystemId"],
        password=credential.secret["Password"],
        system_type=settings.get("SystemType") or "",
        source_addr=settings["SourceAddr"],
        on_receipt=on_receipt,
        destinations=endpoints.destinations,
    )


def _webpush(credential: Credential, endpoints: Endpoints) -> Channel:
    return WebPushChannel(
        vapid_private_key=credential.secret["VapidPrivateKey"],
        subject=credential.settings["Subject"],
        destinations=endpoints.destinations,
    )


def _smtp(credential: Credential, endpoints: Endpoints) -> Channel:
    settings = credential.settings
    return EmailChannel(
        host=settings["Host"],
        port=int(settings["Port"]),
        security=settings["Security"],
        sender=settings["From"],
        username=settings.get("Username"),
        password=credential.secret.get("Password"),
        destinations=endpoints.destinations,
    )


_UNSUPPORTED = {
    "gcm": "Google shut down the legacy GCM/FCM API that server keys use: create an fcm "
    "credential from the Firebase service account and use it instead",
}

_BUILDERS: dict[str, Callable[[Credential, Endpoints], Channel]] = {
    "apn": _apns,
    "fcm": _fcm,
    "twilio-sms": _twilio_sms,
    "smpp": _smpp,
    "messenger": _messenger,
    "webpush": _webpush,
    "smtp": _smtp,
}
