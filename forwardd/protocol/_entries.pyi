"""Types of the C scan of entries (_entries.c); see forwardd/protocol/entries.py."""

def scan_entries(
    data: bytes | bytearray | memoryview,
    start: int = 0,
    end: int = -1,
    max_entries: int = -1,
    slice_bytes: int = 0,
    slice_entries: int = 0,
) -> tuple[int, int, bool, int, int, int, int, int, list[tuple[int, ...]] | None]: ...
def invalid_entries(data: bytes | bytearray | memoryview, /) -> int: ...
def frame_ends(data: bytes | bytearray | memoryview, start: int, shift: int, /) -> tuple[list[int], int]: ...
def message_run(
    data: bytes | bytearray | memoryview,
    start: int,
    ends: list[int],
    first: int,
    shift: int,
    cont_tag: bytes | None,
    cont_room: int,
    group_max: int,
    /,
) -> tuple[list[tuple[bytes, bytes, int, bytes, int, int]], int, int]: ...
