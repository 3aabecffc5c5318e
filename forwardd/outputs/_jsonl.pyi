"""Types of the C transcoder (_jsonl.c)."""

def json_lines(
    entries: bytes | bytearray | memoryview,
    count: int,
    received_ns: int,
    time_head: bytes | None,
    tag_field: bytes | None,
    skip_a: bytes | None,
    skip_b: bytes | None,
    release: bool = False,
    /,
) -> tuple[bytes, list[tuple[int, int, int]]] | None: ...
def json_values(
    entries: bytes | bytearray | memoryview,
    start: int,
    limit: int,
    received_ns: int,
    time_head: bytes | None,
    tag_field: bytes | None,
    skip_a: bytes | None,
    skip_b: bytes | None,
    /,
) -> tuple[list[bytes], int] | None: ...
