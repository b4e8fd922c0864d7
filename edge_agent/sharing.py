"""Sharing controls: which lines, topics and payload fields an MQTT sink receives.

A sink without ``share`` receives everything. A sink with ``share`` (a sponsor's broker, say)
receives only the messages of the allowed ``lines`` and ``topics``, each reduced to the allowed
``fields`` plus the fields every payload keeps so that it still identifies itself and validates
(:data:`CORE_FIELDS`). The filter runs before a message enters that sink's outbox, so nothing
outside the agreement is ever written to its file, let alone sent; the sink applies it again
when it publishes, so messages queued under an older, wider agreement do not leave the plant
after the agreement was narrowed.

Pure code: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from edge_agent.config.schema import ShareConfig
from edge_agent.contract import CORE_FIELDS, LINE_TOPICS, PAYLOAD_FIELDS, SHARED_MARK
from edge_agent.model import OutMessage

# What a share may list: the line topics (suffixes under {topic_prefix}/{site}/{line}/) and
# the top-level payload fields, both derived from the report types by the contract. A field
# listed applies to every topic whose payload has it. CORE_FIELDS are kept on every shared
# sink; SHARED_MARK marks a payload from which fields were withheld.
__all__ = ["CORE_FIELDS", "LINE_TOPICS", "PAYLOAD_FIELDS", "SHARED_MARK", "ShareFilter"]


class ShareFilter:
    """Applies one sink's :class:`ShareConfig` to messages (``None``: everything passes)."""

    def __init__(self, share: ShareConfig | None) -> None:
        self.share = share
        self._lines = share.lines if share is not None else None
        self._topics = share.topics if share is not None else None
        self._keep = (share.fields | CORE_FIELDS) if share and share.fields is not None else None

    @property
    def passes_all(self) -> bool:
        return self.share is None

    def allows(self, line: str, topic_suffix: str) -> bool:
        """Whether a message of ``line`` on ``topic_suffix`` may go to this sink at all."""
        if self._lines is not None and line not in self._lines:
            return False
        return self._topics is None or topic_suffix in self._topics

    def keeps(self, field_name: str) -> bool:
        """Whether the top-level payload field ``field_name`` may go to this sink."""
        return self._keep is None or field_name in self._keep

    def reduce(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` with only the allowed fields (and the core ones), marked as shared when
        anything was withheld."""
        keep = self._keep
        if keep is None:
            return payload
        out = {k: v for k, v in payload.items() if k in keep}
        if any(k not in keep and k != SHARED_MARK for k in payload):
            out[SHARED_MARK] = True
        return out

    def select(self, messages: Iterable[OutMessage]) -> list[OutMessage]:
        """The messages this sink may receive, each reduced to the allowed fields."""
        if self.share is None:
            return list(messages)
        return [
            replace(m, payload=self.reduce(m.payload))
            for m in messages
            if self.allows(m.line, m.topic_suffix)
        ]

    def reduce_stored(self, payload: bytes) -> bytes:
        """The publish-time check of a stored (serialised) payload: unchanged when it holds no
        field outside the agreement, else re-serialised without them."""
        if self._keep is None:
            return payload
        doc = json.loads(payload)
        if not isinstance(doc, dict) or all(k in self._keep or k == SHARED_MARK for k in doc):
            return payload
        return json.dumps(
            self.reduce(doc), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
