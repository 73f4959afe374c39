"""Clarion: a self-hosted, multi-channel notification service speaking Twilio Notify v1."""

from __future__ import annotations

__version__ = "0.1.0"
