"""clarion.channels.hpack_codec against hpack itself: whatever the headers, the table size and
its changes, what our encoder writes hpack's decoder reads back exactly, block after block, and
what hpack's encoder writes our decoder reads as hpack's own decoder does, faults included."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import pytest
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_table import decode_huffman as hpack_decode_huffman

from clarion.channels.hpack_codec import HeaderDecoder, HeaderEncoder, decode_huffman, integer


def as_pairs(headers: Iterable[HeaderTuple]) -> list[tuple[bytes, bytes, bool]]:
    return [(h[0], h[1], isinstance(h, NeverIndexedHeaderTuple)) for h in headers]


def apns_request(token: int, *, jwt: bytes = b"bearer " + b"j" * 180) -> list[HeaderTuple]:
    return [
        HeaderTuple(b":method", b"POST"),
        HeaderTuple(b":scheme", b"https"),
        HeaderTuple(b":authority", b"api.push.apple.com"),
        NeverIndexedHeaderTuple(b":path", b"/3/device/%064x" % token),
        HeaderTuple(b"authorization", jwt),
        HeaderTuple(b"apns-topic", b"com.example.app"),
        HeaderTuple(b"apns-push-type", b"alert"),
        HeaderTuple(b"apns-priority", b"10"),
        NeverIndexedHeaderTuple(b"apns-id", b"01234567-89ab-cdef-0123-%012x" % token),
    ]


def test_repeated_requests_decode_the_same_and_shrink_to_indexes() -> None:
    encoder, decoder = HeaderEncoder(), Decoder()
    blocks = []
    for token in range(5):
        headers = apns_request(token)
        block = encoder.encode(headers)
        assert as_pairs(decoder.decode(block, raw=True)) == as_pairs(headers)
        blocks.append(block)
    # The first block adds authority, authorization, topic, push type and priority to the table;
    # later ones refer to them by index and carry only the two unique values.
    assert len(blocks[1]) < len(blocks[0]) - 200
    assert len({len(block) for block in blocks[1:]}) == 1


def test_the_same_table_as_hpack_means_the_same_indexes() -> None:
    """Both encoders keep the table §4 describes: hpack's encoder (without Huffman) and ours
    give byte-identical blocks for headers that do not need Huffman's choice."""
    ours, theirs = HeaderEncoder(), Encoder()
    for token in range(3):
        headers = apns_request(token)
        assert ours.encode(headers) == theirs.encode(headers, huffman=False)


def test_a_header_larger_than_the_table_is_sent_without_indexing() -> None:
    encoder, decoder = HeaderEncoder(), Decoder()
    encoder.header_table_size = decoder.max_allowed_table_size = 100
    big = [HeaderTuple(b"x-big", b"v" * 200), HeaderTuple(b"x-small", b"s")]
    for _ in range(3):
        assert as_pairs(decoder.decode(encoder.encode(big), raw=True)) == as_pairs(big)
    assert decoder.header_table_size == 100


@pytest.mark.parametrize("seed", range(20))
def test_random_headers_and_table_sizes_stay_in_step_with_the_decoder(seed: int) -> None:
    rng = random.Random(seed)
    encoder, decoder = HeaderEncoder(), Decoder()
    names = [b":path", b"content-type", b"x-a", b"x-b", b"authorization", b"accept-encoding"]
    values = [b"", b"gzip, deflate", b"/", b"v" * 40, b"w" * 300, b"short"]
    for _ in range(60):
        if rng.random() < 0.15:
            # The peer changes SETTINGS_HEADER_TABLE_SIZE, maybe twice before the next block.
            for _ in range(rng.choice((1, 2))):
                size = rng.choice((0, 64, 200, 1000, 4096, 8192))
                encoder.header_table_size = size
            decoder.max_allowed_table_size = max(size, decoder.max_allowed_table_size)
        headers = [
            (NeverIndexedHeaderTuple if rng.random() < 0.2 else HeaderTuple)(
                rng.choice(names), rng.choice(values) + bytes(rng.choice(b"abc") for _ in range(2))
            )
            for _ in range(rng.randrange(1, 12))
        ]
        assert as_pairs(decoder.decode(encoder.encode(headers), raw=True)) == as_pairs(headers)
        assert decoder.header_table_size == encoder.header_table_size


@pytest.mark.parametrize(
    ("value", "prefix_bits", "expected"),
    [(10, 5, b"\x0a"), (1337, 5, b"\x1f\x9a\x0a"), (42, 8, b"\x2a"), (31, 5, b"\x1f\x00")],
)
def test_integers_are_encoded_as_rfc_7541_c1_shows(
    value: int, prefix_bits: int, expected: bytes
) -> None:
    assert integer(value, prefix_bits, 0) == expected


def test_huffman_strings_decode_as_hpack_decodes_them() -> None:
    rng = random.Random(5)
    encoder = Encoder()
    for _ in range(3000):
        text = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        coded = encoder.huffman_coder.encode(text)
        assert decode_huffman(coded) == text == hpack_decode_huffman(coded)


def outcome(decoder: HeaderDecoder | Decoder, block: bytes) -> Any:
    """The headers decoded, or the kind of error."""
    try:
        return as_pairs(decoder.decode(block, raw=True))
    except HPACKDecodingError as exc:
        # hpack raises InvalidTableIndex, its deprecated subclass of InvalidTableIndexError.
        kinds = (InvalidTableIndexError, InvalidTableSizeError, OversizedHeaderListError)
        return next((kind for kind in kinds if isinstance(exc, kind)), HPACKDecodingError)


@pytest.mark.parametrize("seed", range(20))
def test_the_decoder_reads_what_hpack_writes_and_keeps_the_same_table(seed: int) -> None:
    """hpack's encoder (Huffman or not, sensitive headers, table size changes) feeds both
    decoders: every block gives the same headers, of the same kinds, and the same table size."""
    rng = random.Random(seed)
    encoder, ours, theirs = Encoder(), HeaderDecoder(), Decoder()
    names = [b":status", b"content-type", b"apns-id", b"retry-after", b"x-a", b"server"]
    values = [b"200", b"410", b"application/json", b"v" * 60, b"w" * 400, b""]
    for _ in range(60):
        if rng.random() < 0.15:
            size = rng.choice((0, 100, 1000, 4096))
            encoder.header_table_size = size
        headers = [
            (rng.choice(names), rng.choice(values) + b"%d" % rng.randrange(3), rng.random() < 0.2)
            for _ in range(rng.randrange(1, 10))
        ]
        block = encoder.encode(headers, huffman=rng.random() < 0.7)
        decoded = ours.decode(block, raw=True)
        assert as_pairs(decoded) == as_pairs(theirs.decode(block, raw=True))
        assert [(n, v) for n, v, _ in as_pairs(decoded)] == [(n, v) for n, v, _ in headers]
        assert ours.header_table_size == theirs.header_table_size


@pytest.mark.parametrize("seed", range(10))
def test_damaged_blocks_fail_as_hpack_fails_them(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        good = Encoder().encode(
            [(b":status", b"200"), (b"apns-id", b"%032x" % rng.randrange(2**64))], huffman=True
        )
        damaged = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        block = bytes(damaged[: rng.randrange(1, len(damaged) + 1)])
        assert outcome(HeaderDecoder(), block) == outcome(Decoder(), block)


def test_limits_are_enforced() -> None:
    decoder = HeaderDecoder()
    decoder.max_header_list_size = 100
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(Encoder().encode([(b"x-big", b"v" * 200)]), raw=True)
    decoder = HeaderDecoder()
    decoder.max_allowed_table_size = 1000
    with pytest.raises(InvalidTableSizeError):
        decoder.decode(integer(2000, 5, 0x20), raw=True)
    with pytest.raises(InvalidTableIndexError):
        HeaderDecoder().decode(bytes((0x80 | 70,)), raw=True)
