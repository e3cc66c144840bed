"""schemathesis against the live API (its CLI: its pytest plugin does not support pytest 9), every check, a
fixed seed and a bounded example count: 0 failures.

Documented exceptions, each a rule the schema language cannot state:
- The ``Idempotency-Key`` header is left out of the fuzzed schema: a key names one request, so the same key
  with another body is a 422 by design, a rule about earlier requests that no schema expresses (the
  generator reuses values). tests/app/test_idempotency.py covers the header.
- ``positive_data_acceptance`` (schema-valid input must be accepted) runs only on routes without integer or
  email fields in their body: JSON Schema's ``integer`` admits ``216.0``, which the API refuses on purpose
  (strict ids, issue 11), and email-validator refuses addresses ``format: email`` allows (reserved domains).
  Every other check runs on every route.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from lab.stack import Stack

ST = str(Path(sys.executable).with_name("schemathesis"))
POSITIVE_ONLY_ON = r"^/(health|api/v1/tasks/\{task_id\}|api/v1/users/\{user_id\}/export)$"


def fuzz_schema(api: str, tmp_path: Path) -> Path:
    schema = httpx.get(f"{api}/openapi.json", timeout=10).json()
    for ops in schema["paths"].values():
        for op in ops.values():
            op["parameters"] = [p for p in op.get("parameters", []) if p["name"] != "Idempotency-Key"]
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(schema))
    return path


def run_st(api: str, schema: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [ST, "run", str(schema), "--url", api, "--seed", "1", "--max-examples", "15", "--workers", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=tmp_path, check=False)


def test_the_live_api_passes_every_schemathesis_check(app_stack: Stack, tmp_path: Path) -> None:
    api = app_stack.urls["api"]
    schema = fuzz_schema(api, tmp_path)
    try:
        every = run_st(api, schema, tmp_path, "--checks", "all", "--exclude-checks", "positive_data_acceptance")
        assert every.returncode == 0, every.stdout[-6000:] + every.stderr[-2000:]
        assert "8/8" in every.stdout  # every operation was selected and tested
        positive = run_st(
            api, schema, tmp_path, "--checks", "positive_data_acceptance", "--include-path-regex", POSITIVE_ONLY_ON
        )
        assert positive.returncode == 0, positive.stdout[-6000:] + positive.stderr[-2000:]
        assert "3/8" in positive.stdout
    finally:
        app_stack.sink_refuse(0)
