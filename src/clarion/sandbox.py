"""`clarion serve --sandbox`: every provider emulated in this process, so a new user sees the
whole flow — register, send, deliver, retire dead tokens, SMS delivered reports, Messenger
delivery webhooks — with no provider account.

A service without a credential for a channel sends through the emulator of that channel; a
service that has one keeps using it. The emulators script outcomes from the address (README,
"Sandbox"): APNs/FCM tokens starting `dead` are unregistered, `bad` invalid, `slow` answered
after 5 s; Twilio's magic test numbers fail as Twilio's do; Messenger ids starting `dead` are
unavailable (551); web-push endpoints whose last segment starts `dead` are gone (410), `bad`
unknown (404); e-mail local parts starting `dead` have no mailbox (550), `bad` are refused (553),
`busy` are deferred (451).

SMS go through the Twilio emulator by default. An SMSC emulator (SMPP 3.4) runs alongside, for
trying the `smpp` credential type: create one with the host, port, SystemId and Password the
server announces (`announcement()`), and its SMS get SMPP delivery receipts instead.
"""

from __future__ import annotations

import contextlib
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion import credential_types
from clarion.channels.apns import ApnsChannel
from clarion.channels.base import Channel
from clarion.channels.email import EmailChannel
from clarion.channels.fcm import FcmChannel
from clarion.channels.messenger import MessengerChannel
from clarion.channels.twilio_sms import TwilioSmsChannel
from clarion.channels.webpush import WebPushChannel
from clarion.delivery.channels import Endpoints
from clarion.emulators.apns import ApnsEmulator
from clarion.emulators.fcm import FcmEmulator
from clarion.emulators.messenger import MessengerEmulator
from clarion.emulators.smsc import SmscEmulator
from clarion.emulators.smtp import SmtpEmulator
from clarion.emulators.twilio import TwilioEmulator
from clarion.emulators.webpush import WebPushEmulator

# The credential SIDs the sandbox's SMS status callbacks and Messenger webhooks name: no stored
# credential has them (a SID's hex is random), and the webhooks check them against the sandbox's
# own auth token and app secret (`webhook_secrets`).
SANDBOX_CREDENTIAL_SID = "CR" + "0" * 32
SANDBOX_MESSENGER_CREDENTIAL_SID = "CR" + "0" * 31 + "1"
SANDBOX_TOPIC = "com.clarion.sandbox"
SANDBOX_SENDER = "+15005550006"  # Twilio's magic "valid From" number
SANDBOX_PAGE = "1000000000"
# The VAPID contact and the e-mail sender of the sandbox's own web-push and e-mail channels.
SANDBOX_CONTACT = "sandbox@clarion.invalid"
# The SMSC emulator's account: fixed, so an smpp credential made once keeps working. It only
# listens on 127.0.0.1, and on SMPP's usual port when that is free (another one otherwise).
SANDBOX_SMPP_SYSTEM_ID = "clarion"
SANDBOX_SMPP_PASSWORD = "sandbox"  # noqa: S105 - the emulator's, printed and documented
SANDBOX_SMPP_PORT = 2775
# How many of the latest records of each kind every emulator keeps (what it received, callbacks
# it made, ids it has seen). Nothing in `serve` reads them, and unbounded they grow with every
# delivery for as long as the server runs (≈ 170 MB more after 100,000 deliveries); a thousand
# is plenty for someone poking at a sandbox from a debugger.
SANDBOX_KEEP = 1_000


class Sandbox:
    def __init__(self, *, endpoints: Endpoints, slow_delay: float = 5.0) -> None:
        """The emulators report to Clarion at `endpoints`: the Twilio emulator's status
        callbacks and the Messenger emulator's delivery webhooks name the sandbox's credential
        SIDs, signed with secrets only this process holds."""
        self._sms_status_callback = endpoints.sms_status_callback(SANDBOX_CREDENTIAL_SID)
        self.twilio_account_sid = "AC" + secrets.token_hex(16)
        self.twilio_auth_token = secrets.token_hex(16)
        self._page_token = secrets.token_urlsafe(24)
        self._app_secret = secrets.token_hex(16)
        self.apns = ApnsEmulator(slow_delay=slow_delay, keep=SANDBOX_KEEP)
        self.fcm = FcmEmulator(slow_delay=slow_delay, keep=SANDBOX_KEEP)
        self.twilio = TwilioEmulator(
            accounts={self.twilio_account_sid: self.twilio_auth_token}, keep=SANDBOX_KEEP
        )
        self.messenger = MessengerEmulator(
            pages={SANDBOX_PAGE: self._page_token},
            slow_delay=slow_delay,
            webhook_url=endpoints.messenger_webhook(SANDBOX_MESSENGER_CREDENTIAL_SID),
            app_secret=self._app_secret,
            keep=SANDBOX_KEEP,
        )
        # Any subscription is pushed to the emulator, which decrypts those it issued.
        self.webpush = WebPushEmulator(
            slow_delay=slow_delay, accept_unknown=True, keep=SANDBOX_KEEP
        )
        self.smtp = SmtpEmulator(security="starttls", slow_delay=slow_delay, keep=SANDBOX_KEEP)
        self.smsc = SmscEmulator(
            port=SANDBOX_SMPP_PORT,
            accounts={SANDBOX_SMPP_SYSTEM_ID: SANDBOX_SMPP_PASSWORD},
            receipt_delay=0.5,
            keep=SANDBOX_KEEP,
        )
        vapid: dict[str, str] = {}
        credential_types.TYPES["webpush"].complete(vapid)  # a fresh key pair
        self._vapid_private_key = vapid["VapidPrivateKey"]
        # What a page passes to `pushManager.subscribe()` to receive the sandbox's pushes.
        self.vapid_public_key = vapid["VapidPublicKey"]
        self._channels: dict[str, Channel] = {}

    async def start(self) -> None:
        """Start the emulators and the channels that reach them."""
        for emulator in self._emulators:
            await emulator.start()
        try:
            await self.smsc.start()
        except OSError:  # SMPP's port is taken: any free one will do, it is announced
            await self.smsc.close()
            self.smsc = SmscEmulator(
                accounts={SANDBOX_SMPP_SYSTEM_ID: SANDBOX_SMPP_PASSWORD},
                receipt_delay=0.5,
                keep=SANDBOX_KEEP,
            )
            await self.smsc.start()
        fcm = FcmChannel(service_account=self.fcm.new_service_account(), base_url=self.fcm.url)
        self._channels = {
            "apn": self._apns_channel(),
            "fcm": fcm,
            "gcm": fcm,
            "sms": TwilioSmsChannel(
                account_sid=self.twilio_account_sid,
                auth_token=self.twilio_auth_token,
                from_=SANDBOX_SENDER,
                base_url=self.twilio.url,
                status_callback=self._sms_status_callback,
            ),
            "facebook-messenger": MessengerChannel(
                page_id=SANDBOX_PAGE,
                page_access_token=self._page_token,
                base_url=self.messenger.url,
            ),
            "webpush": WebPushChannel(
                vapid_private_key=self._vapid_private_key,
                subject=f"mailto:{SANDBOX_CONTACT}",
                push_service_url=self.webpush.url,
                ssl_context=self.webpush.client_ssl_context(),
            ),
            "email": EmailChannel(
                host=self.smtp.host,
                port=self.smtp.port,
                sender=SANDBOX_CONTACT,
                security="starttls",
                tls_context=self.smtp.client_ssl_context(),
                local_hostname="clarion.invalid",
            ),
        }

    @property
    def smpp_credential(self) -> dict[str, str]:
        """The parameters of an `smpp` credential that sends through the SMSC emulator."""
        return {
            "Host": self.smsc.host,
            "Port": str(self.smsc.port),
            "SystemId": SANDBOX_SMPP_SYSTEM_ID,
            "Password": SANDBOX_SMPP_PASSWORD,
            "SourceAddr": SANDBOX_SENDER,
        }

    def announcement(self) -> list[str]:
        """Lines `clarion serve --sandbox` prints: what a user needs to try SMPP."""
        smpp = self.smpp_credential
        return [
            f"  SMSC emulator (SMPP 3.4): {smpp['Host']}:{smpp['Port']}",
            f"    SystemId {smpp['SystemId']}, Password {smpp['Password']} (Type=smpp credential)",
        ]

    @property
    def webhook_secrets(self) -> dict[str, str]:
        """What signs the emulators' webhooks, by the credential SID their URLs name."""
        return {
            SANDBOX_CREDENTIAL_SID: self.twilio_auth_token,
            SANDBOX_MESSENGER_CREDENTIAL_SID: self._app_secret,
        }

    @property
    def _emulators(
        self,
    ) -> tuple[
        ApnsEmulator,
        FcmEmulator,
        TwilioEmulator,
        MessengerEmulator,
        WebPushEmulator,
        SmtpEmulator,
    ]:
        return (self.apns, self.fcm, self.twilio, self.messenger, self.webpush, self.smtp)

    def _apns_channel(self) -> ApnsChannel:
        key = ec.generate_private_key(ec.SECP256R1())
        key_id, team_id = "SANDBOXKEY", "SANDBOXTEA"
        self.apns.register_key(
            key_id=key_id,
            team_id=team_id,
            public_key_pem=key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return ApnsChannel(
            private_key=private_pem,
            key_id=key_id,
            team_id=team_id,
            bundle_id=SANDBOX_TOPIC,
            sandbox=True,
            base_url=self.apns.url,
            ssl_context=self.apns.client_ssl_context(),
        )

    def fallback(self, binding_type: str) -> Channel | None:
        """The channel a binding type uses when its service has no credential for it."""
        return self._channels.get(binding_type)

    async def stop(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in {id(c): c for c in channels.values()}.values():
            await channel.close()
        for emulator in self._emulators:
            await emulator.close()
        with contextlib.suppress(Exception):
            await self.smsc.close()
