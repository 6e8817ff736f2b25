"""Protocol v1 parsing, without a server."""

from __future__ import annotations

import pytest

from server.errors import ErrorCode, RequestError
from server.protocol import Cancel, Help, Kinds, Ping, Status, Submit, Watch, encode, parse_request


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"op":"submit","kind":"echo","args":{"a":1},"ref":"r1"}', Submit("echo", {"a": 1}, "r1")),
        ('{"op":"submit","kind":"echo"}\n', Submit("echo", {}, None)),
        ('{"op":"cancel","job":"j1"}', Cancel("j1")),
        ('{"op":"status","job":"j1","ref":"x"}', Status("j1", "x")),
        ('{"op":"watch","jobs":["a","b"]}', Watch(("a", "b"))),
        ('{"op":"kinds"}', Kinds()),
        ('{"op":"ping","ref":"p"}\r\n', Ping("p")),
        ("audio https://example.com/a.wav\n", Submit("audio.length", {"url": "https://example.com/a.wav"})),
        ("euro 26-03-2024", Submit("euro.results", {"date": "26-03-2024"})),
        ("cancel j1", Cancel("j1")),
        ("status j1", Status("j1")),
        ("watch j1 j2 j3", Watch(("j1", "j2", "j3"))),
        ("kinds", Kinds()),
        ("PING\n", Ping()),
        ("help", Help()),
    ],
)
def test_parses_every_op_in_json_and_plain_text(text: str, expected: object) -> None:
    assert parse_request(text) == expected


@pytest.mark.parametrize(
    ("text", "code", "ref"),
    [
        ("{not json", ErrorCode.BAD_JSON, None),
        ('{"op":"ping"', ErrorCode.BAD_JSON, None),
        ("[1, 2]", ErrorCode.BAD_REQUEST, None),
        ("42", ErrorCode.BAD_REQUEST, None),
        ('"ping"', ErrorCode.BAD_REQUEST, None),
        ("   ", ErrorCode.BAD_REQUEST, None),
        ('{"ref":"r"}', ErrorCode.BAD_REQUEST, "r"),
        ('{"op":"submit","ref":5}', ErrorCode.BAD_REQUEST, None),
        ('{"op":"ping","ref":"' + "x" * 129 + '"}', ErrorCode.BAD_REQUEST, None),
        ('{"op":"fly","ref":"r"}', ErrorCode.UNKNOWN_OP, "r"),
        ('{"op":"submit","args":{},"ref":"r"}', ErrorCode.BAD_REQUEST, "r"),
        ('{"op":"submit","kind":"echo","args":[1],"ref":"r"}', ErrorCode.BAD_REQUEST, "r"),  # a field's type
        ('{"op":"cancel","ref":"r"}', ErrorCode.BAD_REQUEST, "r"),
        ('{"op":"status","job":7}', ErrorCode.BAD_REQUEST, None),
        ('{"op":"watch","jobs":"j1"}', ErrorCode.BAD_REQUEST, None),
        ('{"op":"watch","jobs":[1]}', ErrorCode.BAD_REQUEST, None),
        ("fly away", ErrorCode.UNKNOWN_OP, None),
        ("audio", ErrorCode.INVALID_ARGS, None),
        ("euro 2024-03-26 extra", ErrorCode.INVALID_ARGS, None),
        ("watch", ErrorCode.BAD_REQUEST, None),
        ("status", ErrorCode.BAD_REQUEST, None),
    ],
)
def test_refuses_bad_frames_with_the_designs_codes(text: str, code: ErrorCode, ref: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(text)
    assert caught.value.code is code
    assert caught.value.ref == ref
    assert caught.value.message


def test_ref_of_exactly_128_characters_is_accepted() -> None:
    assert parse_request('{"op":"ping","ref":"' + "x" * 128 + '"}') == Ping("x" * 128)


def test_encoded_frames_are_one_line_even_with_newlines_in_values() -> None:
    line = encode({"type": "result", "result": {"text": "a\nb"}})
    assert "\n" not in line
    assert line == '{"type":"result","result":{"text":"a\\nb"}}'
