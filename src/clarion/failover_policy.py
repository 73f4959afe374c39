"""The `Failover` policy (an extension): which channels to try for an identity, in what order,
and how long to wait for a sign of life on each before moving on.

    Failover={"channels": ["push", "messenger", "sms"], "wait": 120}

A channel group is `push` (every push binding type), `messenger` (Facebook Messenger) or a
single binding type. The same text is a service's default (`Failover` on the service) and a
notification's override; `Failover=off` on a notification turns a service default off for it.
Pure: parsing and validation only, so the API, the store and the engine share one reading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from clarion import errors
from clarion.addresses import BINDING_TYPES

PARAMETER = "Failover"
OFF = "off"

# Named groups, then every binding type as a group of its own. `push` is every channel whose
# payload runs app code that confirms receipt (twi_receipt): native apps and web push.
GROUPS: dict[str, tuple[str, ...]] = {
    "push": ("apn", "fcm", "gcm", "webpush"),
    "messenger": ("facebook-messenger",),
    **{binding_type: (binding_type,) for binding_type in BINDING_TYPES},
}
MAX_GROUPS = 5
DEFAULT_WAIT = 120
MAX_WAIT = 86_400  # a day: a notification worth failing over is worth it within a day


@dataclass(frozen=True, slots=True)
class Policy:
    channels: tuple[str, ...]
    wait: int

    def binding_types(self, step: int) -> tuple[str, ...]:
        """The binding types of the `step`th group."""
        return GROUPS[self.channels[step]]

    def to_json(self) -> dict[str, Any]:
        """How the policy is stored and shown: always with its `wait`, defaults filled in."""
        return {"channels": list(self.channels), "wait": self.wait}


def from_json(value: dict[str, Any]) -> Policy:
    """A policy this module wrote (`to_json`), read back from the database."""
    return Policy(channels=tuple(value["channels"]), wait=int(value["wait"]))


def parse(text: str) -> Policy | None:
    """The policy in `text`, None for `off`; a 400 naming `Failover` and the fault otherwise."""
    if text == OFF:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _invalid(f'must be a JSON object like {_EXAMPLE}, or "off"') from exc
    if not isinstance(value, dict):
        raise _invalid(f'must be a JSON object like {_EXAMPLE}, or "off"')
    return validate(value)


def validate(value: dict[str, Any]) -> Policy:
    unknown = sorted(set(value) - {"channels", "wait"})
    if unknown:
        raise _invalid(f"unknown key '{unknown[0]}' (the keys are 'channels' and 'wait')")
    channels = value.get("channels")
    if not isinstance(channels, list) or not 1 <= len(channels) <= MAX_GROUPS:
        raise _invalid(f"'channels' must be a list of 1 to {MAX_GROUPS} channel groups")
    seen: dict[str, str] = {}
    for name in channels:
        if not isinstance(name, str) or name not in GROUPS:
            raise _invalid(f"'channels' has {json.dumps(name)}, which is not one of {_NAMES}")
        for binding_type in GROUPS[name]:
            if binding_type in seen:
                raise _invalid(
                    f"'channels' lists {binding_type} twice ('{seen[binding_type]}' and "
                    f"'{name}'): each channel can be tried once"
                )
            seen[binding_type] = name
    wait = value.get("wait", DEFAULT_WAIT)
    if isinstance(wait, bool) or not isinstance(wait, int) or not 1 <= wait <= MAX_WAIT:
        raise _invalid(f"'wait' must be a whole number of seconds from 1 to {MAX_WAIT}")
    return Policy(channels=tuple(channels), wait=wait)


_EXAMPLE = '{"channels": ["push", "sms"], "wait": 120}'
_NAMES = ", ".join(GROUPS)


def _invalid(problem: str) -> errors.ClarionError:
    return errors.invalid_parameter(PARAMETER, problem)
