"""Synthetic golden vectors: hand-written bytes with their decoded form beside them, one per carrier mode
and time shape and per edge case of section (a). Each vector is fed whole and one byte at a time; both must
give the expected outcome.

Shorthands used in the comments: tag ``t`` = ``a1 74``; record R = ``{"k": "v"}`` = ``81 a1 6b a1 76``;
T = 1441588984 s = ``ce 55 ec e6 f8``; T5 = T + 0.5 s (nanoseconds ``1d cd 65 00``); RECV = the receive
time given to the connection. Options ``{"chunk": "c"}`` = ``81 a5 63 68 75 6e 6b a1 63``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from forwardd.protocol import (
    EntriesReceived,
    Heartbeat,
    Rejected,
    ServerConnection,
)

from .violations import split_off

NS = 1_000_000_000
RECV = 1_700_000_000_123_456_789
T = 1441588984 * NS
T5 = T + 500_000_000
R = {"k": "v"}
ACK_C = "81 a3 61 63 6b a1 63"  # {"ack": "c"}


@dataclass
class Ok:
    mode: str
    events: list[tuple[int, dict[Any, Any], Any]]
    ack: str | None = None
    invalid: int = 0
    tag: str = "t"


@dataclass
class Rej:
    reason: str
    ack: str | None = None


@dataclass
class HB:
    pass


@dataclass
class Err:
    reason: str


@dataclass
class V:
    hex: str
    expect: list[Ok | Rej | HB | Err] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return bytes.fromhex("".join(line.split("#")[0] for line in self.hex.splitlines()))


VECTORS: dict[str, V] = {
    # ----- Message mode: [tag, time, record, option?] -----
    "message/int": V("94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 80", [Ok("message", [(T, R, None)])]),  # docker
    "message/eventtime_fixext8": V(
        "94 a1 74 d7 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 76 80", [Ok("message", [(T5, R, None)])]
    ),
    "message/eventtime_ext8": V(
        "94 a1 74 c7 08 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 76 80", [Ok("message", [(T5, R, None)])]
    ),
    "message/float": V(
        "94 a1 74 cb 41 d5 7b 39 be 20 00 00 81 a1 6b a1 76 80", [Ok("message", [(T5, R, None)])]
    ),
    "message/wrapped_time": V(  # [t, [T, {"m": 1}], R, {}]
        "94 a1 74 92 ce 55 ec e6 f8 81 a1 6d 01 81 a1 6b a1 76 80", [Ok("message", [(T, R, {"m": 1})])]
    ),
    "message/wrapped_eventtime_no_meta": V(  # [t, [T5], R]
        "93 a1 74 91 d7 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 76", [Ok("message", [(T5, R, {})])]
    ),
    "message/nil_time_is_receive_time": V("93 a1 74 c0 81 a1 6b a1 76", [Ok("message", [(RECV, R, None)])]),
    "message/zero_time_is_receive_time": V("93 a1 74 00 81 a1 6b a1 76", [Ok("message", [(RECV, R, None)])]),
    "message/ext0_of_4_bytes_is_invalid": V(  # fixext4 type 0: not an EventTime
        "94 a1 74 d6 00 55 ec e6 f8 81 a1 6b a1 76 80", [Ok("message", [], invalid=1)]
    ),
    "message/ext0_of_16_bytes_is_invalid": V(
        "94 a1 74 d8 00" + " 00" * 16 + " 81 a1 6b a1 76 80", [Ok("message", [], invalid=1)]
    ),
    "message/msgpack_timestamp_ext_minus1_is_invalid": V(  # fixext4 type -1
        "94 a1 74 d6 ff 55 ec e6 f8 81 a1 6b a1 76 80", [Ok("message", [], invalid=1)]
    ),
    "message/options_nil": V("94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 c0", [Ok("message", [(T, R, None)])]),
    "message/options_missing": V("93 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76", [Ok("message", [(T, R, None)])]),
    "message/options_not_a_map": V(
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 01", [Ok("message", [(T, R, None)])]
    ),
    "message/extra_elements_ignored": V(
        "95 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 81 a5 63 68 75 6e 6b a1 63 c3",
        [Ok("message", [(T, R, None)], ACK_C)],
    ),
    "message/chunk_str_with_newline_echoed": V(  # {"chunk": "abc==\n"} -> {"ack": "abc==\n"}
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 81 a5 63 68 75 6e 6b a6 61 62 63 3d 3d 0a",
        [Ok("message", [(T, R, None)], "81 a3 61 63 6b a6 61 62 63 3d 3d 0a")],
    ),
    "message/chunk_bin_echoed": V(  # {"chunk": b"\x01\x02\x03"} -> {"ack": b"\x01\x02\x03"}
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 81 a5 63 68 75 6e 6b c4 03 01 02 03",
        [Ok("message", [(T, R, None)], "81 a3 61 63 6b c4 03 01 02 03")],
    ),
    "message/chunk_str8_echoed_as_str8": V(  # non-minimal str8 header kept as sent
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 81 a5 63 68 75 6e 6b d9 01 63",
        [Ok("message", [(T, R, None)], "81 a3 61 63 6b d9 01 63")],
    ),
    "message/chunk_after_size_and_unknown_keys": V(  # {"size": 1, "x": [1], "chunk": "c"}
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 83 a4 73 69 7a 65 01 a1 78 91 01 a5 63 68 75 6e 6b a1 63",
        [Ok("message", [(T, R, None)], ACK_C)],
    ),
    "message/metadata_option_kept_beside_record": V(  # option {"metadata": {"m": 1}} (Fluent Bit)
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 81 a8 6d 65 74 61 64 61 74 61 81 a1 6d 01",
        [Ok("message", [(T, R, {"m": 1})])],
    ),
    "message/record_not_a_map_rejected_and_acked": V(
        "94 a1 74 ce 55 ec e6 f8 a1 78 81 a5 63 68 75 6e 6b a1 63", [Rej("bad_message", ACK_C)]
    ),
    "message/time_of_no_known_type_rejected": V("94 a1 74 c3 81 a1 6b a1 76 80", [Rej("bad_time")]),
    "message/without_record_rejected": V("92 a1 74 ce 55 ec e6 f8", [Rej("bad_message")]),
    "message/fluent_signal_1_rejected_and_acked": V(  # {"chunk": "c", "fluent_signal": 1}
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 82 a5 63 68 75 6e 6b a1 63"
        " ad 66 6c 75 65 6e 74 5f 73 69 67 6e 61 6c 01",
        [Rej("unsupported_signal", ACK_C)],
    ),
    "message/fluent_signal_0_is_logs": V(
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 81 ad 66 6c 75 65 6e 74 5f 73 69 67 6e 61 6c 00",
        [Ok("message", [(T, R, None)])],
    ),
    "message/u64_beyond_i64_kept": V(  # {"n": 2**64-1, "m": 2**63}
        "94 a1 74 ce 55 ec e6 f8 82 a1 6e cf ff ff ff ff ff ff ff ff a1 6d cf 80 00 00 00 00 00 00 00 80",
        [Ok("message", [(T, {"n": 2**64 - 1, "m": 2**63}, None)])],
    ),
    "message/non_utf8_tag_and_value_kept": V(  # tag b"\xff\xfe", {"k": b"\xc3("} as str
        "94 a2 ff fe ce 55 ec e6 f8 81 a1 6b a2 c3 28 80",
        [Ok("message", [(T, {"k": "\udcc3("}, None)], tag="\udcff\udcfe")],
    ),
    "message/nested_values_bin_ext": V(  # {"a": {"b": [1, b"\x00"]}, "e": ExtType(5, b"x")}
        "94 a1 74 ce 55 ec e6 f8 82 a1 61 81 a1 62 92 01 c4 01 00 a1 65 d4 05 78 80",
        [Ok("message", [(T, {"a": {"b": [1, b"\x00"]}, "e": "ext5"}, None)])],
    ),
    # ----- Forward mode: [tag, [[time, record], ...], option?] -----
    "forward/every_time_shape": V(
        """93 a1 74 94
           92 ce 55 ec e6 f8 81 a1 6b a1 76                      # [T, R]
           92 d7 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 76       # [EventTime fixext8, R]
           92 c7 08 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 76    # [EventTime ext8, R]
           92 cb 41 d5 7b 39 be 20 00 00 81 a1 6b a1 76          # [float, R]
           80""",
        [Ok("forward", [(T, R, None), (T5, R, None), (T5, R, None), (T5, R, None)])],
    ),
    "forward/wrapped_time": V(  # [t, [[[T, {}], R]]]: the spec's v1.5 example
        "92 a1 74 91 92 92 ce 55 ec e6 f8 80 81 a1 6b a1 76", [Ok("forward", [(T, R, {})])]
    ),
    "forward/wrapped_eventtime_with_meta": V(
        "92 a1 74 91 92 92 d7 00 55 ec e6 f8 1d cd 65 00 81 a1 6d 01 81 a1 6b a1 76",
        [Ok("forward", [(T5, R, {"m": 1})])],
    ),
    "forward/nil_and_zero_times": V(
        "92 a1 74 92 92 c0 81 a1 6b a1 76 92 00 81 a1 6b a1 76", [Ok("forward", [(RECV, R, None)] * 2)]
    ),
    "forward/one_bad_two_good_entries_acked": V(
        """93 a1 74 93
           92 ce 55 ec e6 f8 81 a1 6b a1 76     # good
           92 d6 00 55 ec e6 f8 81 a1 6b a1 76  # ext type 0 of 4 bytes: invalid
           92 c0 81 a1 6b a1 76                 # good, nil time
           81 a5 63 68 75 6e 6b a1 63""",
        [Ok("forward", [(T, R, None), (RECV, R, None)], ACK_C, invalid=1)],
    ),
    "forward/record_not_map_and_short_entry_invalid": V(
        "92 a1 74 93 92 ce 55 ec e6 f8 a1 78 91 01 92 ce 55 ec e6 f8 81 a1 6b a1 76",
        [Ok("forward", [(T, R, None)], invalid=2)],
    ),
    "forward/non_minimal_headers_as_fluent_bit": V(
        """dd 00 00 00 03 db 00 00 00 01 74              # array32(3), str32 tag
           dd 00 00 00 01 dd 00 00 00 02 ce 55 ec e6 f8  # array32 of array32 entries
           df 00 00 00 01 db 00 00 00 01 6b db 00 00 00 01 76  # map32 {str32: str32}
           df 00 00 00 00""",
        [Ok("forward", [(T, R, None)])],
    ),
    "forward/size_lying_unknown_keys_ignored": V(  # {"size": 4294967295, "foo": "bar", "chunk": "c"}
        "93 a1 74 91 92 ce 55 ec e6 f8 81 a1 6b a1 76"
        " 83 a4 73 69 7a 65 ce ff ff ff ff a3 66 6f 6f a3 62 61 72 a5 63 68 75 6e 6b a1 63",
        [Ok("forward", [(T, R, None)], ACK_C)],
    ),
    "forward/empty_options_and_empty_batch": V(
        "93 a1 74 91 92 ce 55 ec e6 f8 81 a1 6b a1 76 80 93 a1 74 90 80",
        [Ok("forward", [(T, R, None)]), Ok("forward", [])],
    ),
    "forward/fluent_signal_2_rejected_and_acked": V(
        "93 a1 74 91 92 ce 55 ec e6 f8 81 a1 6b a1 76 82 ad 66 6c 75 65 6e 74 5f 73 69 67 6e 61 6c 02"
        " a5 63 68 75 6e 6b a1 63",
        [Rej("unsupported_signal", ACK_C)],
    ),
    # ----- PackedForward: [tag, bin|str entries, option?] -----
    # P = [T, {"k":"v"}] [T5, {"k":"w"}] (27 bytes):
    #     92 ce 55 ec e6 f8 81 a1 6b a1 76 92 d7 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 77
    "packed/bin": V(
        "93 a1 74 c4 1b 92 ce 55 ec e6 f8 81 a1 6b a1 76 92 d7 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 77 80",
        [Ok("packed_forward", [(T, R, None), (T5, {"k": "w"}, None)])],
    ),
    "packed/str8_no_options": V(
        "92 a1 74 d9 1b 92 ce 55 ec e6 f8 81 a1 6b a1 76 92 d7 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 77",
        [Ok("packed_forward", [(T, R, None), (T5, {"k": "w"}, None)])],
    ),
    "packed/str32_invalid_utf8_as_fluentd": V(  # str32 payload, {"size": 2, "compressed": "text", chunk}
        "94 a1 74 db 00 00 00 1b 92 ce 55 ec e6 f8 81 a1 6b a1 76 92 d7 00 55 ec e6 f8 1d cd 65 00"
        " 81 a1 6b a1 77 83 a4 73 69 7a 65 02 aa 63 6f 6d 70 72 65 73 73 65 64 a4 74 65 78 74"
        " a5 63 68 75 6e 6b a6 61 62 63 3d 3d 0a c0",  # + an extra element, ignored
        [
            Ok(
                "packed_forward",
                [(T, R, None), (T5, {"k": "w"}, None)],
                "81 a3 61 63 6b a6 61 62 63 3d 3d 0a",
            )
        ],
    ),
    "packed/wrapped_time": V(  # [[T, {}], R] [[T5, {"m": 1}], {"k": "w"}]
        "93 a1 74 c4 22 92 92 ce 55 ec e6 f8 80 81 a1 6b a1 76"
        " 92 92 d7 00 55 ec e6 f8 1d cd 65 00 81 a1 6d 01 81 a1 6b a1 77 80",
        [Ok("packed_forward", [(T, R, {}), (T5, {"k": "w"}, {"m": 1})])],
    ),
    "packed/float_int_nil_and_ext8_times": V(
        "93 a1 74 c4 25 92 cb 41 d5 7b 39 be 20 00 00 80 92 00 80 92 c0 80"
        " 92 c7 08 00 55 ec e6 f8 1d cd 65 00 80 92 ce 55 ec e6 f8 80 80",
        [
            Ok(
                "packed_forward",
                [(T5, {}, None), (RECV, {}, None), (RECV, {}, None), (T5, {}, None), (T, {}, None)],
            )
        ],
    ),
    "packed/broken_tail_counted": V(  # P + "92 ce" (cut short)
        "93 a1 74 c4 1d 92 ce 55 ec e6 f8 81 a1 6b a1 76 92 d7 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 77"
        " 92 ce 80",
        [Ok("packed_forward", [(T, R, None), (T5, {"k": "w"}, None)], invalid=1)],
    ),
    "packed/no_entry_at_all_rejected": V(
        "93 a1 74 c4 01 c1 81 a5 63 68 75 6e 6b a1 63", [Rej("bad_entries", ACK_C)]
    ),
    "packed/compressed_text_is_plain": V(
        "93 a1 74 c4 1b 92 ce 55 ec e6 f8 81 a1 6b a1 76 92 d7 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 77"
        " 81 aa 63 6f 6d 70 72 65 73 73 65 64 a4 74 65 78 74",
        [Ok("packed_forward", [(T, R, None), (T5, {"k": "w"}, None)])],
    ),
    "packed/chunk_bin_with_newline_echoed": V(
        "93 a1 74 c4 0b 92 ce 55 ec e6 f8 81 a1 6b a1 76 81 a5 63 68 75 6e 6b c4 06 61 62 63 3d 3d 0a",
        [Ok("packed_forward", [(T, R, None)], "81 a3 61 63 6b c4 06 61 62 63 3d 3d 0a")],
    ),
    "packed/unknown_compression_rejected_and_acked": V(  # {"compressed": "lz4", "chunk": "c"}
        "93 a1 74 c4 0b 92 ce 55 ec e6 f8 81 a1 6b a1 76"
        " 82 aa 63 6f 6d 70 72 65 73 73 65 64 a3 6c 7a 34 a5 63 68 75 6e 6b a1 63",
        [Rej("unknown_compression", ACK_C)],
    ),
    "packed/compressed_not_a_string_rejected": V(  # {"compressed": 1}
        "93 a1 74 c4 0b 92 ce 55 ec e6 f8 81 a1 6b a1 76 81 aa 63 6f 6d 70 72 65 73 73 65 64 01",
        [Rej("unknown_compression")],
    ),
    "packed/fluent_signal_1_rejected_and_acked": V(
        "93 a1 74 c4 0b 92 ce 55 ec e6 f8 81 a1 6b a1 76"
        " 82 ad 66 6c 75 65 6e 74 5f 73 69 67 6e 61 6c 01 a5 63 68 75 6e 6b a1 63",
        [Rej("unsupported_signal", ACK_C)],
    ),
    # ----- CompressedPackedForward -----
    "compressed/gzip": V(  # gzip(P), {"compressed": "gzip"}
        "93 a1 74 c4 2b 1f 8b 08 00 00 00 00 00 02 03 9b 74 2e f4 cd b3 1f 8d 0b b3 17 96 4d ba ce 00 62"
        " cb 9e 4d 65 00 f1 cb 01 71 25 4a e1 1b 00 00 00 81 aa 63 6f 6d 70 72 65 73 73 65 64 a4 67 7a 69 70",
        [Ok("compressed_packed_forward", [(T, R, None), (T5, {"k": "w"}, None)])],
    ),
    "compressed/gzip_two_members": V(  # gzip([T, R]) + gzip([T5, {"k": "w"}]), chunk "c"
        "93 a1 74 c4 45 1f 8b 08 00 00 00 00 00 02 03 9b 74 2e f4 cd b3 1f 8d 0b b3 17 96 01 00 07 61 28"
        " ca 0b 00 00 00 1f 8b 08 00 00 00 00 00 02 03 9b 74 9d 21 f4 cd b3 1f b2 67 53 19 1a 17 66 2f 2c"
        " 07 00 7b f7 f3 3e 10 00 00 00"
        " 82 aa 63 6f 6d 70 72 65 73 73 65 64 a4 67 7a 69 70 a5 63 68 75 6e 6b a1 63",
        [Ok("compressed_packed_forward", [(T, R, None), (T5, {"k": "w"}, None)], ACK_C)],
    ),
    "compressed/gzip_wrapped_time": V(  # gzip([[T, {}], R] [[T5, {"m": 1}], {"k": "w"}])
        "93 a1 74 c4 33 1f 8b 08 00 00 00 00 00 02 03 9b 34 e9 5c e8 9b 67 3f 1a 1a 17 66 2f 2c 9b 34 e9"
        " 3a 03 88 27 7b 36 95 a1 71 61 2e 23 48 b0 1c 00 db a1 a3 42 22 00 00 00"
        " 81 aa 63 6f 6d 70 72 65 73 73 65 64 a4 67 7a 69 70",
        [Ok("compressed_packed_forward", [(T, R, {}), (T5, {"k": "w"}, {"m": 1})])],
    ),
    "compressed/zstd": V(  # zstd(P)
        "93 a1 74 c4 24 28 b5 2f fd 20 1b d9 00 00 92 ce 55 ec e6 f8 81 a1 6b a1 76 92 d7 00 55 ec e6 f8"
        " 1d cd 65 00 81 a1 6b a1 77 81 aa 63 6f 6d 70 72 65 73 73 65 64 a4 7a 73 74 64",
        [Ok("compressed_packed_forward", [(T, R, None), (T5, {"k": "w"}, None)])],
    ),
    "compressed/corrupt_gzip_rejected_and_acked": V(
        "93 a1 74 c4 04 1f 8b 08 ff"
        " 82 aa 63 6f 6d 70 72 65 73 73 65 64 a4 67 7a 69 70 a5 63 68 75 6e 6b a1 63",
        [Rej("bad_gzip", ACK_C)],
    ),
    # ----- Option maps with values that cannot be built (found by fuzz/fuzz_decoder.py: ValueError) ---
    "options/non_string_keys_skipped": V(  # {1: 2, [1]: {}, "chunk": "c"}
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 83 01 02 91 01 80 a5 63 68 75 6e 6b a1 63",
        [Ok("message", [(T, R, None)], ACK_C)],
    ),
    "options/ext_minus_128_key_skipped": V(
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 81 d4 80 00 01", [Ok("message", [(T, R, None)])]
    ),
    "options/compressed_of_reserved_ext_type_rejected": V(  # {"compressed": ext(-128)}
        "93 a1 74 c4 0b 92 ce 55 ec e6 f8 81 a1 6b a1 76 81 aa 63 6f 6d 70 72 65 73 73 65 64 d4 80 00",
        [Rej("unknown_compression")],
    ),
    "options/fluent_signal_of_reserved_ext_type_rejected": V(
        "93 a1 74 91 92 ce 55 ec e6 f8 81 a1 6b a1 76 81 ad 66 6c 75 65 6e 74 5f 73 69 67 6e 61 6c d4 80 00",
        [Rej("unsupported_signal")],
    ),
    "options/metadata_with_a_map_key_ignored": V(  # {"metadata": {[1]: 2}}
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 81 a8 6d 65 74 61 64 61 74 61 81 91 01 02",
        [Ok("message", [(T, R, None)])],
    ),
    # ----- Heartbeats, several requests, broken requests -----
    "heartbeat/nil": V("c0", [HB()]),
    "stream/three_requests_in_one_read": V(
        "94 a1 74 ce 55 ec e6 f8 81 a1 6b a1 76 80 c0 92 a1 74 91 92 ce 55 ec e6 f8 81 a1 6b a1 76"
        " 93 a1 74 c4 0b 92 ce 55 ec e6 f8 81 a1 6b a1 76 81 a5 63 68 75 6e 6b a1 63",
        [
            Ok("message", [(T, R, None)]),
            HB(),
            Ok("forward", [(T, R, None)]),
            Ok("packed_forward", [(T, R, None)], ACK_C),
        ],
    ),
    "error/not_an_array": V("81 a1 6b a1 76", [Err("not_an_array")]),
    "error/integer_at_top_level": V("01", [Err("not_an_array")]),
    "error/tag_not_a_string": V("93 01 ce 55 ec e6 f8 81 a1 6b a1 76", [Err("bad_tag")]),
    "error/tag_as_bin": V("93 c4 01 74 ce 55 ec e6 f8 81 a1 6b a1 76", [Err("bad_tag")]),
    "error/array_of_one": V("91 a1 74", [Err("bad_request")]),
    "error/invalid_msgpack": V("c1", [Err("bad_msgpack")]),
    "error/after_good_request": V(
        "93 a1 74 c0 81 a1 6b a1 76 c1", [Ok("message", [(RECV, R, None)]), Err("bad_msgpack")]
    ),
}


def _outcome(ev: Any) -> Ok | Rej | HB:
    if isinstance(ev, Heartbeat):
        return HB()
    if isinstance(ev, Rejected):
        return Rej(ev.reason, ev.ack.hex(" ") if ev.ack is not None else None)
    assert isinstance(ev, EntriesReceived)
    framed_invalid = ev.chunk.invalid  # a broken tail the framer cut off, counted before decoding
    events = ev.chunk.events()
    assert ev.chunk.count == len(events) + ev.chunk.invalid - framed_invalid
    got = [(e.time_ns, _plain(e.record), e.meta) for e in events]
    return Ok(ev.mode, got, ev.ack.hex(" ") if ev.ack is not None else None, ev.chunk.invalid, ev.chunk.tag)


def _plain(record: dict[Any, Any]) -> dict[Any, Any]:
    """ExtType values as ``extN`` so that the expectations stay literal."""
    return {k: f"ext{v.code}" if type(v).__name__ == "ExtType" else v for k, v in record.items()}


def run(data: bytes, pieces: int) -> list[Ok | Rej | HB | Err]:
    conn = ServerConnection(clock_ns=lambda: RECV)
    out: list[Ok | Rej | HB | Err] = []
    step = 1 if pieces else len(data)
    for i in range(0, len(data), step):
        # Events completed in the same read before the broken bytes come before the violation.
        events, broke = split_off(conn.receive_data(data[i : i + step]))
        out += [_outcome(ev) for ev in events]
        if broke is not None:
            out.append(Err(broke.reason))
            break
    return out


@pytest.mark.parametrize("split", ["whole", "byte_by_byte"])
@pytest.mark.parametrize("name", VECTORS)
def test_vector(name: str, split: str) -> None:
    v = VECTORS[name]
    expect = [
        Ok(e.mode, e.events, " ".join(e.ack.split()), e.invalid, e.tag) if isinstance(e, Ok) and e.ack else e
        for e in v.expect
    ]
    expect = [Rej(e.reason, " ".join(e.ack.split())) if isinstance(e, Rej) and e.ack else e for e in expect]
    assert run(v.data, split == "byte_by_byte") == expect


def test_chunk_entries_keep_the_client_bytes() -> None:
    """PackedForward entries are the payload as sent (no re-encoding), Forward entries the array body."""
    conn = ServerConnection(clock_ns=lambda: RECV)
    (ev,) = conn.receive_data(VECTORS["packed/bin"].data)
    assert ev.chunk.entries == VECTORS["packed/bin"].data[5:-1]
    (ev,) = conn.receive_data(VECTORS["forward/every_time_shape"].data)
    assert ev.chunk.entries == VECTORS["forward/every_time_shape"].data[4:-1]
    assert not ev.chunk.decoded


def test_message_entry_is_the_time_and_record_bytes_as_sent() -> None:
    (ev,) = ServerConnection().receive_data(VECTORS["message/eventtime_ext8"].data)
    assert ev.chunk.entries == bytes.fromhex("92 c7 08 00 55 ec e6 f8 1d cd 65 00 81 a1 6b a1 76")
    assert ev.size == len(VECTORS["message/eventtime_ext8"].data)
