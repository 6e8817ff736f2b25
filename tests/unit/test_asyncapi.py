"""docs/asyncapi.yaml: a valid AsyncAPI 3.0 document that lists everything the server knows."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from actors import JobErrorCode
from server.errors import CloseCode, ErrorCode
from server.protocol import OPS
from tests.helpers import ROOT, server_frame_errors

SPEC = ROOT / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())))
    return loaded


def spec_errors(doc: dict[str, Any]) -> list[str]:
    assert Path(SPEC).exists(), "make test installs the AsyncAPI schemas from npm (@asyncapi/specs)"
    spec = json.loads(SPEC.read_text())
    return [error.message for error in jsonschema.validators.validator_for(spec)(spec).iter_errors(doc)]


def test_the_document_is_valid_asyncapi_3() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    assert spec_errors(doc) == []
    broken = copy.deepcopy(doc)
    broken["operations"]["submit"]["action"] = "publish"  # AsyncAPI 2's word: the check must notice
    del broken["info"]["title"]
    assert len(spec_errors(broken)) >= 2


def test_the_document_names_every_op_code_and_close_code() -> None:
    doc = document()
    schemas = doc["components"]["schemas"]
    assert set(schemas["ErrorCode"]["enum"]) == {str(code) for code in ErrorCode}
    assert set(schemas["JobErrorCode"]["enum"]) == {str(code) for code in JobErrorCode}
    assert {int(code) for code in doc["channels"]["socket"]["x-close-codes"]} >= {int(code) for code in CloseCode}
    assert {op.strip() for op in OPS.split(",")} <= set(doc["operations"])


def test_frames_are_checked_against_it() -> None:
    assert server_frame_errors({"type": "pong", "ref": "r"}) == []
    assert server_frame_errors({"type": "result", "job": "j", "kind": "echo", "status": "succeeded", "result": 1}) == []
    assert server_frame_errors({"type": "pong", "extra": 1}) != []
    assert server_frame_errors({"type": "error", "code": "made_up", "message": "m"}) != []


def test_the_readmes_error_table_matches_the_server() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| code | when |"):].split("\n\n", 1)[0]
    listed = {line.split("`")[1] for line in table.splitlines()[2:] if line.startswith("| `")}
    assert listed == {str(code) for code in ErrorCode}
    sentence = readme[readme.index("A failed job's `result.error.code` is one of"):].split("\n\n", 1)[0]
    assert {str(code) for code in JobErrorCode} <= {word.strip("`,.") for word in sentence.split() if "`" in word}
