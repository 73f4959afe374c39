"""HPACK (RFC 7541) encoding for the HTTP/2 client: the header blocks hpack's `Encoder` sends,
without Huffman coding, at a fraction of its CPU.

hpack looks every header up in its tables and rebuilds each representation on every request:
~25 µs for an APNs request, a sixth of what a whole send costs (reference/perf-limits.md). A push
provider's connection sends the same dozen headers thousands of times a second, with one or two
values that change (`:path`, `apns-id`), so this encoder keeps, per header, where it sits in the
tables, and writes each representation with a lookup or two:

- a header in the static table, or added to the dynamic table earlier: its index (§6.1);
- a `NeverIndexedHeaderTuple` (a value unique to one request, or a secret): a literal never
  indexed (§6.2.3), its name by static index when it has one;
- any other header: a literal with incremental indexing (§6.2.1), added to the dynamic table;
  one that could never fit the table goes as a literal without indexing (§6.2.2).

The dynamic table is kept as §4 says, so the peer's decoder holds the same one: an entry costs
its name and value lengths plus 32, the oldest are evicted to make room, and a change of the
peer's SETTINGS_HEADER_TABLE_SIZE (h2 sets `header_table_size`) is signalled at the start of the
next block (§4.2, §6.3). Values are never Huffman-coded: pure-Python Huffman is slower than the
bytes it saves on these connections.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from hpack import NeverIndexedHeaderTuple
from hpack.table import HeaderTable

Header = tuple[bytes, bytes]

# The HTTP/2 default SETTINGS_HEADER_TABLE_SIZE: the peer's table until it says otherwise.
DEFAULT_TABLE_SIZE = 4096
# §4.1: an entry's size is its name and value lengths plus this.
ENTRY_OVERHEAD = 32

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
            elif len(name) + len(value) + ENTRY_OVERHEAD <= self._max_size:
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
        size = len(header[0]) + len(header[1]) + ENTRY_OVERHEAD
        self._evict(room_for=size)
        self._entries.append((header, self._inserted))
        self._inserted_as[header] = self._inserted
        self._inserted += 1
        self._size += size

    def _evict(self, *, room_for: int) -> None:
        """Drop the oldest entries until `room_for` more bytes fit (§4.4)."""
        while self._entries and self._size + room_for > self._max_size:
            header, number = self._entries.popleft()
            self._size -= len(header[0]) + len(header[1]) + ENTRY_OVERHEAD
            if self._inserted_as.get(header) == number:
                del self._inserted_as[header]
