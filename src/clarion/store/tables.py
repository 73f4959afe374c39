"""The schema, shared by SQLite and PostgreSQL.

Every row hangs off an account: resource tables carry `account_id` (directly or through their
service) and every query filters on it, so one tenant can never reach another's rows. Integer
keys are internal (joins, keyset paging); SIDs are what the API shows. Timestamps are naive UTC.

The notification → job/delivery tables are the work queue of DESIGN.md: a notification is stored
in the same transaction as its pending work, which the delivery engine claims with leases.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

# Stable constraint names on both engines, so migrations can refer to them.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
Id = BigInteger().with_variant(Integer(), "sqlite")


def _id() -> Column[int]:
    return Column("id", Id, primary_key=True, autoincrement=True)


def _sid() -> Column[str]:
    return Column("sid", String(34), nullable=False, unique=True)


def _created() -> Column[object]:
    return Column("date_created", DateTime(), nullable=False)


def _updated() -> Column[object]:
    return Column("date_updated", DateTime(), nullable=False)


account = Table(
    "account",
    metadata,
    _id(),
    _sid(),
    Column("friendly_name", String(64), nullable=False),
    # Sealed with the instance key: callbacks are signed with the token, so it must be readable.
    Column("auth_token_sealed", Text, nullable=False),
    # What authentication compares against, without opening the sealed token per request.
    Column("auth_token_digest", String(64), nullable=False),
    _created(),
    _updated(),
)

api_key = Table(
    "api_key",
    metadata,
    _id(),
    _sid(),
    Column("account_id", ForeignKey("account.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("friendly_name", String(64), nullable=False),
    Column("secret_digest", String(64), nullable=False),
    _created(),
)

credential = Table(
    "credential",
    metadata,
    _id(),
    _sid(),
    Column("account_id", ForeignKey("account.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("type", String(32), nullable=False),
    Column("friendly_name", String(64), nullable=True),
    Column("sandbox", Boolean, nullable=True),
    # Non-secret settings shown back to the caller (key id, team id, host, public key, …).
    Column("settings", JSON, nullable=False),
    # JSON object of the secret fields, sealed; never leaves the process except to a provider.
    Column("secret_sealed", Text, nullable=True),
    _created(),
    _updated(),
)

# Service columns that name a credential, by API field name. Extension columns route the
# channels Twilio Notify did not have.
SERVICE_CREDENTIAL_COLUMNS = (
    "apn_credential_id",
    "gcm_credential_id",
    "fcm_credential_id",
    "sms_credential_id",
    "facebook_messenger_credential_id",
    "webpush_credential_id",
    "email_credential_id",
)

service = Table(
    "service",
    metadata,
    _id(),
    _sid(),
    Column("account_id", ForeignKey("account.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("friendly_name", String(64), nullable=True),
    *(
        Column(name, ForeignKey("credential.id", ondelete="SET NULL"), nullable=True)
        for name in SERVICE_CREDENTIAL_COLUMNS
    ),
    Column("messaging_service_sid", String(34), nullable=True),
    Column("facebook_messenger_page_id", String(64), nullable=True),
    Column("default_apn_notification_protocol_version", String(16), nullable=False),
    Column("default_gcm_notification_protocol_version", String(16), nullable=False),
    Column("default_fcm_notification_protocol_version", String(16), nullable=False),
    Column("default_alexa_notification_protocol_version", String(16), nullable=False),
    Column("log_enabled", Boolean, nullable=False),
    Column("alexa_skill_id", String(128), nullable=True),
    Column("delivery_callback_url", String(2048), nullable=True),
    Column("delivery_callback_enabled", Boolean, nullable=False),
    # The default failover policy of its notifications (clarion.failover_policy), or null.
    Column("failover", JSON, nullable=True),
    _created(),
    _updated(),
)

binding = Table(
    "binding",
    metadata,
    _id(),
    _sid(),
    Column("service_id", ForeignKey("service.id", ondelete="CASCADE"), nullable=False),
    Column("credential_id", ForeignKey("credential.id", ondelete="SET NULL"), nullable=True),
    Column("identity", String(256), nullable=False),
    Column("binding_type", String(32), nullable=False),
    Column("address", Text, nullable=False),
    Column("notification_protocol_version", String(16), nullable=True),
    Column("endpoint", String(256), nullable=True),
    # Set when a provider said the address is dead: fan-out skips the binding from then on, and
    # the API shows why and since when (nothing is deleted silently).
    Column("inactive_since", DateTime(), nullable=True),
    Column("inactive_reason", String(256), nullable=True),
    _created(),
    _updated(),
    # One address per channel per service: registering it again moves it (DESIGN.md, Binding).
    UniqueConstraint("service_id", "binding_type", "address"),
    Index("ix_binding_service_id_identity", "service_id", "identity"),
    # Fan-out walks a service's bindings in id order (keyset chunks).
    Index("ix_binding_service_id_id", "service_id", "id"),
)

# Explicit tags only; the built-in ones (`all`, the binding type) are derived when querying.
binding_tag = Table(
    "binding_tag",
    metadata,
    Column("binding_id", ForeignKey("binding.id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(64), primary_key=True),
    Index("ix_binding_tag_tag_binding_id", "tag", "binding_id"),
)

# Legacy Users: created explicitly, or implicitly by the first binding of an identity.
user = Table(
    "app_user",  # "user" is reserved in PostgreSQL
    metadata,
    _id(),
    _sid(),
    Column("service_id", ForeignKey("service.id", ondelete="CASCADE"), nullable=False),
    Column("identity", String(256), nullable=False),
    _created(),
    _updated(),
    UniqueConstraint("service_id", "identity"),
)

segment = Table(
    "segment",
    metadata,
    _id(),
    _sid(),
    Column("service_id", ForeignKey("service.id", ondelete="CASCADE"), nullable=False),
    Column("unique_name", String(64), nullable=False),
    _created(),
    _updated(),
    UniqueConstraint("service_id", "unique_name"),
)

segment_membership = Table(
    "segment_membership",
    metadata,
    Column("user_id", ForeignKey("app_user.id", ondelete="CASCADE"), primary_key=True),
    Column("segment_id", ForeignKey("segment.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_segment_membership_segment_id_user_id", "segment_id", "user_id"),
)

notification = Table(
    "notification",
    metadata,
    _id(),
    _sid(),
    Column("service_id", ForeignKey("service.id", ondelete="CASCADE"), nullable=False, index=True),
    # Targets as requested: {"identities": [...], "tags": [...], "segments": [...]}.
    Column("targets", JSON, nullable=False),
    # Content as requested: title, body, sound, action and the JSON overrides (data, apn, …).
    Column("content", JSON, nullable=False),
    Column("priority", String(8), nullable=False),
    Column("ttl", Integer, nullable=False),
    Column("expires_at", DateTime(), nullable=False),
    Column("delivery_callback_url", String(2048), nullable=True),
    # The failover policy it was sent with (its own, else its service's then), or null: none.
    Column("failover", JSON, nullable=True),
    # queued → fanning_out → dispatched → completed (every delivery final), or failed when its
    # fan-out gave up. A direct (ToBinding) notification has its deliveries from the start.
    Column("status", String(16), nullable=False),
    _created(),
    Column("date_completed", DateTime(), nullable=True),
    # The notifications the delivery engine still watches, so finding them never scans history.
    Index(
        "ix_notification_open",
        "id",
        postgresql_where=text("status IN ('queued', 'fanning_out', 'dispatched')"),
        sqlite_where=text("status IN ('queued', 'fanning_out', 'dispatched')"),
    ),
)

# Coarse work (fan-out, callbacks, timers), claimed with a lease like deliveries.
job = Table(
    "job",
    metadata,
    _id(),
    Column("kind", String(32), nullable=False),
    Column("notification_id", ForeignKey("notification.id", ondelete="CASCADE"), nullable=True),
    # Where a chunked job resumes after a crash (e.g. the last binding id fanned out).
    Column("cursor", JSON, nullable=True),
    # pending → running (leased) → done | failed
    Column("status", String(16), nullable=False),
    Column("run_at", DateTime(), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False, server_default=text("10")),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", DateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("dedupe_key", String(128), nullable=True, unique=True),
    Index(
        "ix_job_pending",
        "run_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    Index(
        "ix_job_running",
        "lease_expires_at",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    Index("ix_job_notification_id", "notification_id"),
)

# One notification to one address over one channel: the unit of work, retry and record.
delivery = Table(
    "delivery",
    metadata,
    _id(),
    Column("notification_id", ForeignKey("notification.id", ondelete="CASCADE"), nullable=False),
    # Null for ToBinding (passthrough) addresses, which have no stored binding.
    Column("binding_id", ForeignKey("binding.id", ondelete="SET NULL"), nullable=True),
    Column("identity", String(256), nullable=True),
    Column("channel", String(32), nullable=False),
    Column("address", Text, nullable=False),
    # The binding's own credential, copied at fan-out; null means the service's for the channel.
    Column("credential_id", ForeignKey("credential.id", ondelete="SET NULL"), nullable=True),
    # pending → sending → sent → delivered | failed | expired
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(), nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", DateTime(), nullable=True),
    # Set when a lease expired mid-send: the provider may or may not have the message.
    Column("ambiguous", Boolean, nullable=False, server_default=text("false")),
    # Held for a send slot of its credential's rate limit, which it already owns: it is due at
    # `next_attempt_at` and takes no second slot (clarion.store.send_slots).
    Column("slot_reserved", Boolean, nullable=False, server_default=text("false")),
    Column("provider_ref", String(256), nullable=True),
    # A Notify code ("52002") or the provider's own ("Unregistered", "21211").
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    # Failover (clarion.store.failover): the delivery of the identity's previous group this one
    # follows, the index of its group in the policy, and why the chain moved on to it.
    Column("failover_of", ForeignKey("delivery.id", ondelete="SET NULL"), nullable=True),
    Column("failover_step", Integer, nullable=True),
    Column("failover_reason", String(16), nullable=True),
    # When the provider took the message (the last attempt's): a column rather than a `sent`
    # event row, as every delivery has one and the event table's insert cost ~10 µs each.
    Column("date_sent", DateTime(), nullable=True),
    _created(),
    _updated(),
    UniqueConstraint("notification_id", "channel", "address"),
    # A notification's deliveries in id order: the Deliveries list's pages and the debugger.
    Index("ix_delivery_notification_id_id", "notification_id", "id"),
    Index(
        "ix_delivery_pending",
        "priority",
        "next_attempt_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    # What the sweeper looks at: leases that may have run out.
    Index(
        "ix_delivery_leased",
        "lease_expires_at",
        postgresql_where=text("status = 'sending'"),
        sqlite_where=text("status = 'sending'"),
    ),
    # Whether a notification still has work left, without reading its finished deliveries.
    Index(
        "ix_delivery_open",
        "notification_id",
        postgresql_where=text("status IN ('pending', 'sending')"),
        sqlite_where=text("status IN ('pending', 'sending')"),
    ),
    # Provider reports (SMS status callbacks) name the message by the provider's id.
    Index(
        "ix_delivery_provider_ref",
        "provider_ref",
        postgresql_where=text("provider_ref IS NOT NULL"),
        sqlite_where=text("provider_ref IS NOT NULL"),
    ),
    # Retiring a binding fails its other pending deliveries; deleting one nulls its references.
    Index("ix_delivery_binding_id", "binding_id"),
    Index(
        "ix_delivery_credential_id",
        "credential_id",
        postgresql_where=text("credential_id IS NOT NULL"),
        sqlite_where=text("credential_id IS NOT NULL"),
    ),
    # One identity's deliveries of one failover step: has every one failed, which came first.
    Index(
        "ix_delivery_failover",
        "notification_id",
        "identity",
        "failover_step",
        postgresql_where=text("failover_step IS NOT NULL"),
        sqlite_where=text("failover_step IS NOT NULL"),
    ),
)

# One identity's way through a notification's failover policy: which group it is on, until a
# confirmation (confirmed) or the end of the list (exhausted). Waiting chains are the timers.
failover_chain = Table(
    "failover_chain",
    metadata,
    _id(),
    Column("notification_id", ForeignKey("notification.id", ondelete="CASCADE"), nullable=False),
    Column("identity", String(256), nullable=False),
    # Index of the current group in the policy's channels; only ever grows. The number of
    # groups once none is left.
    Column("step", Integer, nullable=False),
    # waiting → confirmed | exhausted
    Column("status", String(16), nullable=False),
    # When it moves on without a confirmation: set exactly while it is waiting, so the partial
    # indexes below say "waiting" without naming the status (queries by id then never mistake
    # them for a way to find a few waiting chains among many).
    Column("deadline", DateTime(), nullable=True),
    # Why it left its previous group: no_binding | dead_token | failed | no_receipt.
    Column("reason", String(16), nullable=True),
    # A delivery of the previous group: what the current group's deliveries are a failover of.
    # No foreign key (nor the index one would need): the chain goes with its deliveries.
    Column("failover_of", Id, nullable=True),
    # The group whose delivery was confirmed (it may be earlier than `step`, if late).
    Column("confirmed_step", Integer, nullable=True),
    _created(),
    _updated(),
    UniqueConstraint("notification_id", "identity"),
    # The timer poll: the waiting chains whose deadline passed, soonest first.
    Index(
        "ix_failover_chain_due",
        "deadline",
        postgresql_where=text("deadline IS NOT NULL"),
        sqlite_where=text("deadline IS NOT NULL"),
    ),
    # Whether a notification still has a chain waiting (it is not complete before then).
    Index(
        "ix_failover_chain_waiting",
        "notification_id",
        postgresql_where=text("deadline IS NOT NULL"),
        sqlite_where=text("deadline IS NOT NULL"),
    ),
)

# The virtual schedule of a rate-limited credential (its `RateLimit` setting): the earliest time,
# in seconds since the epoch, that its next unreserved send slot may have. Workers move it
# forward as they reserve slots (clarion.store.send_slots).
send_slot = Table(
    "send_slot",
    metadata,
    Column(
        "credential_id",
        ForeignKey("credential.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("next_at", Float, nullable=False),
)

# Append-only history of each delivery (attempts, answers, retries), for the debugger.
delivery_event = Table(
    "delivery_event",
    metadata,
    _id(),
    Column("delivery_id", ForeignKey("delivery.id", ondelete="CASCADE"), nullable=False),
    Column("at", DateTime(), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", JSON, nullable=True),
    Index("ix_delivery_event_delivery_id", "delivery_id", "id"),
)

# What each delivery-callback POST got back (clarion.delivery.callbacks), for the debugger:
# the receiver's status or the connection's error, how long it took, the start of its answer.
# Bounded: only the last few attempts of each batch are kept (clarion.store.callbacks).
delivery_callback_attempt = Table(
    "delivery_callback_attempt",
    metadata,
    _id(),
    Column("notification_id", ForeignKey("notification.id", ondelete="CASCADE"), nullable=False),
    # The batch: its SequenceId and IsFinal, and how many deliveries it reported.
    Column("sequence", Integer, nullable=False),
    Column("final", Boolean, nullable=False),
    Column("deliveries", Integer, nullable=False),
    # Which try at this batch it was, from 1.
    Column("attempt", Integer, nullable=False),
    Column("at", DateTime(), nullable=False),
    # The HTTP status, or null when there was none (then `error` says why).
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("latency_ms", Integer, nullable=False),
    # The first kilobyte or so of the response body, as text with control characters removed.
    Column("response_excerpt", Text, nullable=True),
    # A notification's attempts, a batch's latest first (and the ones to prune).
    Index("ix_delivery_callback_attempt_notification", "notification_id", "sequence", "id"),
)

# Signed-in portal sessions. The cookie carries a random key; a row holds its digest, so
# signing out (deleting the row) ends the session even for a copy of the cookie, and "sign out
# everywhere" deletes every row of the account. `last_seen` is written at most once a minute.
portal_session = Table(
    "portal_session",
    metadata,
    # SHA-256 of the cookie's key, hex: a leaked table holds no usable session.
    Column("key_digest", String(64), primary_key=True),
    Column("account_id", ForeignKey("account.id", ondelete="CASCADE"), nullable=False, index=True),
    # The SID signed in with: the account's, or an API key's.
    Column("username", String(34), nullable=False),
    _created(),
    Column("last_seen", DateTime(), nullable=False),
)
