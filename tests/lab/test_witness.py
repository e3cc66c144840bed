"""The user's count of a probe's side effects: its figures, and bad witnesses refused before anything starts."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from lab.apps import AppInputError, AppTarget
from lab.witness import count, load_witness, resolve

SHOP = AppTarget("examples.external_app.celery:app")


def test_rows_per_id_give_counted_missing_and_duplicates() -> None:
    rows = ["a", "b", "b", "stranger"]  # an id the run did not send is somebody else's row: ignored
    figures = count(lambda ids: rows, "w:f", ["a", "b", "c"], completed=2)
    assert figures == {
        "witness": "w:f",
        "counted": 2,
        "effects": 3,
        "duplicate_effects": 1,
        "missing": 1,
        "agrees": True,
    }


def test_a_mapping_of_counts_is_read_as_such_and_zero_is_missing() -> None:
    def seen(ids: list[str]) -> Mapping[str, int]:
        return {"a": 1, "b": 0}

    figures = count(seen, "w:f", ["a", "b"], completed=2)
    assert (figures["counted"], figures["missing"], figures["agrees"]) == (1, 1, False)


@pytest.mark.parametrize("witness", [lambda ids: 1 / 0, lambda ids: 42, lambda ids: {"a": "many"}])
def test_a_witness_that_fails_gives_no_figures(witness: object) -> None:
    figures = count(witness, "w:f", ["a"], completed=1)  # type: ignore[arg-type]
    assert set(figures) == {"witness", "error"}  # so a steady-state probe on witness.missing fails


def test_a_relative_witness_is_in_the_apps_package() -> None:
    assert resolve(".lab_witness:orders_seen", SHOP) == "examples.external_app.lab_witness:orders_seen"
    assert resolve("pkg.mod:f", SHOP) == "pkg.mod:f"
    assert callable(load_witness(".lab_witness:orders_seen", SHOP))


@pytest.mark.parametrize(
    ("spec", "app", "needle"),
    [
        (".lab_witness:orders_seen", AppTarget(), "needs --app"),
        (".nope:f", SHOP, "does not import"),
        (".lab_witness:nope", SHOP, "has no attribute"),
        (".tasks:SCHEMA", SHOP, "not a function"),
    ],
)
def test_a_bad_witness_is_one_clear_line(spec: str, app: AppTarget, needle: str) -> None:
    with pytest.raises(AppInputError, match=needle):
        load_witness(spec, app)
