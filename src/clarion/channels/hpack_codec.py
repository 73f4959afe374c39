"""HPACK (RFC 7541) for the HTTP/2 client: the header blocks hpack's `Encoder` and `Decoder`
make and read, at a fraction of their CPU.

hpack looks every header up in its tables and rebuilds each representation on every request
(~25 µs for an APNs request), and decodes each answer a Huffman nibble at a time (~16 µs for
nginx's or APNs' `:status` + `apns-id`): together a fifth of what a whole send costs
(reference/perf-limits.md). A push provider's connection carries the same dozen headers thousands
of times a second, with one or two values that change (`:path`, `apns-id`).

`HeaderEncoder` keeps, per header, where it sits in the tables, and writes each representation
with a lookup or two:

- a header in the static table, or added to the dynamic table earlier: its index (§6.1);
- a `NeverIndexedHeaderTuple` (a value unique to one request, or a secret): a literal never
  indexed (§6.2.3), its name by static index when it has one;
- any other header: a literal with incremental indexing (§6.2.1), added to the dynamic table;
  one that could never fit the table goes as a literal without indexing (§6.2.2).

Values are never Huffman-coded: pure-Python Huffman costs more than the bytes it saves here.

`HeaderDecoder` reads every representation, Huffman-coded strings a byte at a time through steps
composed from hpack's own nibble table (so it accepts and rejects exactly the strings hpack
does), and returns what hpack's `Decoder.decode(raw=True)` returns, raising its exceptions
(which h2 turns into a connection error) for the same faults: a bad index, a truncated block, a
table size over the allowed one, a header list over `max_header_list_size`.

Both keep the dynamic table as §4 says, so each stays in step with its peer: an entry costs its
name and value lengths plus 32, the oldest are evicted to make room, and a table size change is
signalled, or must be, at the start of a block (§4.2, §6.3).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_table import HUFFMAN_COMPLETE, HUFFMAN_EMIT_SYMBOL, HUFFMAN_FAIL, HUFFMAN_TABLE
from hpack.table import HeaderTable

Header = tuple[bytes, bytes]

# The HTTP/2 default SETTINGS_HEADER_TABLE_SIZE: the peer's table until it says otherwise.
DEFAULT_TABLE_SIZE = 4096
# §4.1: an entry's size is its name and value lengths plus this.
ENTRY_OVERHEAD = 32


def entry_size(header: Header) -> int:
    """§4.1: what `header` takes of a dynamic table (and of a header list's size, §6.5.2)."""
    return len(header[0]) + len(header[1]) + ENTRY_OVERHEAD

_STATIC: Sequence[Header] = HeaderTable.STATIC_TABLE
# Index of each full (name, value) and of each name in the static table (the first one wins).
_STATIC_HEADERS = {header: index for index, header in reversed(list(enumerate(_STATIC, 1)))}
_STATIC_NAMES = {header[0]: index for index, header in reversed(list(enumerate(_STATIC, 1)))}


def integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """§5.1: `value` in an N-bit prefix whose first byte also carries `flags`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    encoded = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _string(data: bytes) -> bytes:
    """§5.2, without Huffman coding."""
    return integer(len(data), 7, 0) + data


def _literal(name: bytes, value: bytes, *, prefix_bits: int, flags: int) -> bytes:
    index = _STATIC_NAMES.get(name)
    if index is not None:
        return integer(index, prefix_bits, flags) + _string(value)
    return bytes((flags,)) + _string(name) + _string(value)


# §6.1 for the indexes one byte holds: most of a request's headers.
_INDEXED = [bytes((0x80 | index,)) for index in range(0x7F)]


class HeaderEncoder:
    """One connection's HPACK encoder; h2 calls `encode` for each header block, in order."""

    def __init__(self) -> None:
        self._max_size = DEFAULT_TABLE_SIZE
        self._size = 0
        # The dynamic table, oldest first, each entry with its insertion number.
        self._entries: deque[tuple[Header, int]] = deque()
        # Insertion number of each header in the dynamic table.
        self._inserted_as: dict[Header, int] = {}
        self._inserted = 0
        # Table sizes the peer has set since the last block (§4.2 wants the smallest signalled).
        self._size_changes: list[int] = []
        # The start of each name's never-indexed literal.
        self._never_indexed_names: dict[bytes, bytes] = {}

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: the most our table may hold from now on."""
        self._max_size = value
        self._evict(room_for=0)
        self._size_changes.append(value)

    def encode(self, headers: Iterable[Header], huffman: bool = True) -> bytes:
        """The header block of `headers` (`huffman` is accepted for hpack's signature and
        ignored)."""
        parts: list[bytes] = []
        if self._size_changes:
            smallest = min(self._size_changes)
            parts.append(integer(smallest, 5, 0x20))
            if self._max_size != smallest:
                parts.append(integer(self._max_size, 5, 0x20))
            self._size_changes.clear()
        static, inserted_as = _STATIC_HEADERS, self._inserted_as
        for header in headers:
            name, value = header[0], header[1]
            if isinstance(header, NeverIndexedHeaderTuple):
                parts.append(self._never_indexed_name(name) + _string(value))
                continue
            key = (name, value)
            index = static.get(key)
            if index is None:
                number = inserted_as.get(key)
                if number is not None:
                    # The newest entry is index 62, just past the static table's 61.
                    index = len(_STATIC) + self._inserted - number
            if index is not None:
                parts.append(_INDEXED[index] if index < 0x7F else integer(index, 7, 0x80))
            elif entry_size(key) <= self._max_size:
                parts.append(_literal(name, value, prefix_bits=6, flags=0x40))
                self._add(key)
            else:
                # Adding it would empty the peer's table (§4.4): send it without indexing.
                parts.append(_literal(name, value, prefix_bits=4, flags=0x00))
        return b"".join(parts)

    def _never_indexed_name(self, name: bytes) -> bytes:
        start = self._never_indexed_names.get(name)
        if start is None:
            index = _STATIC_NAMES.get(name)
            start = integer(index, 4, 0x10) if index is not None else b"\x10" + _string(name)
            self._never_indexed_names[name] = start
        return start

    def _add(self, header: Header) -> None:
        size = entry_size(header)
        self._evict(room_for=size)
        self._entries.append((header, self._inserted))
        self._inserted_as[header] = self._inserted
        self._inserted += 1
        self._size += size

    def _evict(self, *, room_for: int) -> None:
        """Drop the oldest entries until `room_for` more bytes fit (§4.4)."""
        while self._entries and self._size + room_for > self._max_size:
            header, number = self._entries.popleft()
            self._size -= entry_size(header)
            if self._inserted_as.get(header) == number:
                del self._inserted_as[header]


# hpack's default, which h2 lowers or raises from its own settings.
DEFAULT_MAX_HEADER_LIST_SIZE = 2**16
_STATIC_TUPLES = [HeaderTuple(name, value) for name, value in _STATIC]


class HeaderDecoder:
    """One connection's HPACK decoder; h2 calls `decode` for each header block, in order."""

    def __init__(self) -> None:
        # Set by h2 from the settings it sends: what the peer may send and use.
        self.max_header_list_size = DEFAULT_MAX_HEADER_LIST_SIZE
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        self._max_size = DEFAULT_TABLE_SIZE
        self._size = 0
        # The dynamic table, newest first: entry i is index 62 + i.
        self._entries: deque[HeaderTuple] = deque()

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._max_size = value
        self._evict(room_for=0)

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        """The headers of one block (`raw=False`, hpack's default, decodes them as UTF-8)."""
        headers: list[HeaderTuple] = []
        inflated = 0
        at, end = 0, len(data)
        try:
            while at < end:
                first = data[at]
                if first & 0x80:
                    index, at = _read_integer(data, at, 7)
                    header = self._lookup(index)
                elif first & 0x40:
                    header, at = self._literal(data, at, 6, HeaderTuple)
                    self._add(header)
                elif first & 0x20:
                    if headers:
                        raise HPACKDecodingError("Table size update not at the start of the block")
                    size, at = _read_integer(data, at, 5)
                    if size > self.max_allowed_table_size:
                        raise InvalidTableSizeError(
                            f"Encoder exceeded max allowable table size ({size})"
                        )
                    self.header_table_size = size
                    continue
                else:
                    kind = NeverIndexedHeaderTuple if first & 0x10 else HeaderTuple
                    header, at = self._literal(data, at, 4, kind)
                headers.append(header)
                inflated += entry_size(header)
                if inflated > self.max_header_list_size:
                    raise OversizedHeaderListError(
                        f"A header list larger than {self.max_header_list_size} has been received"
                    )
        except IndexError as exc:
            raise HPACKDecodingError("Truncated header block") from exc
        if self._max_size > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        if raw:
            return headers
        try:
            return [
                header.__class__(header[0].decode("utf-8"), header[1].decode("utf-8"))
                for header in headers
            ]
        except UnicodeDecodeError as exc:
            raise HPACKDecodingError("Unable to decode headers as UTF-8") from exc

    def _lookup(self, index: int) -> HeaderTuple:
        if 0 < index <= len(_STATIC):
            return _STATIC_TUPLES[index - 1]
        position = index - len(_STATIC) - 1
        if index == 0 or position >= len(self._entries):
            raise InvalidTableIndexError(f"Invalid table index {index}")
        return self._entries[position]

    def _literal(
        self, data: bytes, at: int, prefix_bits: int, kind: type[HeaderTuple]
    ) -> tuple[HeaderTuple, int]:
        index, at = _read_integer(data, at, prefix_bits)
        if index:
            name = self._lookup(index)[0]
        else:
            name, at = _read_string(data, at)
        value, at = _read_string(data, at)
        return kind(name, value), at

    def _add(self, header: HeaderTuple) -> None:
        size = entry_size(header)
        if size > self._max_size:
            # §4.4: an entry larger than the table empties it and is not added.
            self._entries.clear()
            self._size = 0
            return
        self._evict(room_for=size)
        self._entries.appendleft(header)
        self._size += size

    def _evict(self, *, room_for: int) -> None:
        while self._entries and self._size + room_for > self._max_size:
            header = self._entries.pop()
            self._size -= entry_size(header)


# An integer's continuation bytes beyond this many can only be an attack or garbage.
_MAX_INTEGER_BYTES = 5


def _read_integer(data: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    """§5.1: the integer at `at` in an N-bit prefix, and where the next field starts."""
    limit = (1 << prefix_bits) - 1
    value = data[at] & limit
    at += 1
    if value < limit:
        return value, at
    shift = 0
    for _ in range(_MAX_INTEGER_BYTES):
        byte = data[at]
        at += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    raise HPACKDecodingError("HPACK integer too long")


def _read_string(data: bytes, at: int) -> tuple[bytes, int]:
    """§5.2: the string at `at`, Huffman-decoded if it says so, and where the next one starts."""
    huffman = data[at] & 0x80
    length, at = _read_integer(data, at, 7)
    end = at + length
    if end > len(data):
        raise HPACKDecodingError("Truncated header block")
    raw = bytes(data[at:end])
    return (decode_huffman(raw) if huffman else raw), end


# Huffman decoding a byte at a time: (state after the byte, the bytes it completes, the flags of
# its second nibble) keyed by state << 8 | byte, composed from hpack's nibble table as each is
# first met (at most 256 states x 256 bytes, a few hundred in practice); None for a byte that is
# invalid in that state.
_Step = tuple[int, bytes, int]
_huffman_steps: dict[int, _Step | None] = {}


def _huffman_step(state: int, byte: int) -> _Step | None:
    emitted = bytearray()
    flags = 0
    for nibble in (byte >> 4, byte & 0x0F):
        state, flags, symbol = HUFFMAN_TABLE[state * 16 + nibble]
        if flags & HUFFMAN_FAIL:
            return None
        if flags & HUFFMAN_EMIT_SYMBOL:
            emitted.append(symbol)
    return state, bytes(emitted), flags


def decode_huffman(data: bytes) -> bytes:
    """The same as `hpack.huffman_table.decode_huffman`, in about half the time."""
    if not data:
        return b""
    steps = _huffman_steps
    decoded = bytearray()
    state = flags = 0
    for byte in data:
        key = state << 8 | byte
        try:
            step = steps[key]
        except KeyError:
            step = steps[key] = _huffman_step(state, byte)
        if step is None:
            raise HPACKDecodingError("Invalid Huffman string")
        state, emitted, flags = step
        decoded += emitted
    if not flags & HUFFMAN_COMPLETE:
        raise HPACKDecodingError("Incomplete Huffman string")
    return bytes(decoded)
