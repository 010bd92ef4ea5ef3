"""Messages between vertical parties: Flower RecordDicts, serialised with Flower's own protobuf.

Why serialise in-process too: the bytes a party sends are then exactly what a deployment would put on
the wire (Flower's `RecordDict` proto), so byte counts are real, and every message is kept so tests
can inspect what left a party (no identifier, no raw key, nothing about non-members).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from anonymize.errors import InputError

if TYPE_CHECKING:
    from flwr.app import RecordDict


class PartyDropped(InputError):
    """A party stopped answering; the message names it."""

    def __init__(self, party: str, stage: str) -> None:
        self.party = party
        super().__init__(f"party {party!r} dropped out during {stage}; the run ended and nothing was released")


@dataclass
class Sent:
    """One serialised message: who sent it, to whom, its kind and its bytes."""

    sender: str
    receiver: str
    kind: str
    payload: bytes


@dataclass
class Channel:
    """An in-process link between parties that records every message it carries.

    `offline` names parties that no longer answer: a message to or from one raises PartyDropped.
    `keep` False stores only sizes (for million-row runs).
    """

    keep: bool = True
    offline: set[str] = field(default_factory=set)
    log: list[Sent] = field(default_factory=list)
    bytes_by_sender: dict[str, int] = field(default_factory=dict)

    def send(self, sender: str, receiver: str, kind: str, content: RecordDict) -> RecordDict:
        """Serialise `content`, count it, and hand the receiver a fresh copy parsed from the bytes."""
        from flwr.common import serde
        from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

        for who in (sender, receiver):
            if who in self.offline:
                raise PartyDropped(who, kind)
        payload = serde.recorddict_to_proto(content).SerializeToString()
        self.bytes_by_sender[sender] = self.bytes_by_sender.get(sender, 0) + len(payload)
        self.log.append(Sent(sender, receiver, kind, payload if self.keep else b""))
        proto = RecordDictProto()
        proto.ParseFromString(payload)
        return serde.recorddict_from_proto(proto)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_sender.values())
