"""Predictions stored packed: chunks of parallel arrays, columns over the wire, idempotent batches,
retention by whole runs, and the migration of the old one-row-per-pair table."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from boundary_inference.ledger import (
    Ledger,
    LedgerError,
    PsycopgTransport,
    RunNotFound,
    apply_migrations,
)
from boundary_inference.ledger.predictions import pack, save_in_batches, unpack
from modal_app.types import PairPrediction
from tests.support import schema_migrated_before

T0 = dt.datetime(2030, 1, 15, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect."""


def new_run(ledger: Ledger, frames_version: str = "f1") -> str:
    ledger.upsert_video(id="v1", tenant_id="t1", frame_count=100_000, fps=25.0)
    claim = ledger.claim_run(
        video_id="v1", tenant_id="t1", frames_version=frames_version, model_version="m1"
    )
    return str(claim["run_id"])


def pairs(n: int, seed: int = 1) -> list[PairPrediction]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = rng.random()
        out.append(PairPrediction(frame1=i, frame2=i + 1, probability=p, is_boundary=p > 0.9))
    return out


def chunk_rows(dsn: str, schema: str, run_id: str) -> list[tuple[int, int]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            sql.SQL("SELECT chunk, pairs FROM {} WHERE run_id = %s ORDER BY chunk").format(
                sql.Identifier(schema, "boundary_prediction_chunks")
            ),
            (run_id,),
        ).fetchall()


def test_a_run_saved_in_batches_reads_back_exactly(ledger: Ledger, ledger_dsn: str) -> None:
    run = new_run(ledger)
    predictions = pairs(12_345)
    assert save_in_batches(ledger, run, predictions, batch_pairs=5000) == 12_345
    assert chunk_rows(ledger_dsn, ledger.schema, run) == [(0, 5000), (1, 5000), (2, 2345)]
    packed = ledger.get_predictions_packed(run_id=run)
    assert packed["pairs"] == 12_345
    assert packed["frame1"] == [p.frame1 for p in predictions]
    assert packed["frame2"] == [p.frame2 for p in predictions]
    assert packed["is_boundary"] == [p.is_boundary for p in predictions]
    # Stored as real (float4), as before: equal to 7 significant digits.
    assert packed["probability"] == pytest.approx([p.probability for p in predictions], rel=1e-6)
    rows = ledger.get_predictions(run_id=run)
    assert rows == unpack(packed)
    # A retried flow saves the same batches again: the same chunks, nothing added.
    assert save_in_batches(ledger, run, predictions, batch_pairs=5000) == 12_345
    assert chunk_rows(ledger_dsn, ledger.schema, run) == [(0, 5000), (1, 5000), (2, 2345)]
    assert ledger.get_predictions_packed(run_id=run) == packed


def test_columns_go_over_the_wire_and_rows_are_still_accepted(ledger: Ledger) -> None:
    run = new_run(ledger)
    rows = [{"frame1": 3, "frame2": 4, "probability": 0.5, "is_boundary": True}]
    assert pack(rows) == {
        "frame1": [3],
        "frame2": [4],
        "probability": [0.5],
        "is_boundary": [True],
    }
    # The earlier JSON form (one object per pair), straight to the SQL function.
    old_form = ledger.transport.call(
        "save_predictions",
        {"p_run_id": run, "p_rows": [{**rows[0], "frame1": 1, "frame2": 2, "probability": 0.25}]},
    )
    assert old_form == {"run_id": run, "saved": 1, "chunk": 0}
    assert ledger.save_predictions(run_id=run, rows=rows) == {"run_id": run, "saved": 1, "chunk": 1}
    assert [(p["frame1"], p["probability"]) for p in ledger.get_predictions(run_id=run)] == [
        (1, 0.25),
        (3, 0.5),
    ]


def test_the_last_save_of_a_pair_wins(ledger: Ledger, ledger_dsn: str) -> None:
    run = new_run(ledger)
    first = [
        {"frame1": 0, "frame2": 1, "probability": 0.1, "is_boundary": False},
        {"frame1": 1, "frame2": 2, "probability": 0.9, "is_boundary": True},
    ]
    assert ledger.save_predictions(run_id=run, rows=first)["chunk"] == 0
    later = [
        {"frame1": 1, "frame2": 2, "probability": 0.2, "is_boundary": False},
        {"frame1": 5, "frame2": 9, "probability": 0.5, "is_boundary": True},
        {"frame1": 5, "frame2": 9, "probability": 0.75, "is_boundary": True},  # repeated: last
    ]
    assert ledger.save_predictions(run_id=run, rows=later) == {
        "run_id": run,
        "saved": 2,
        "chunk": 1,
    }
    got = ledger.get_predictions(run_id=run)
    assert [(p["frame1"], p["frame2"], p["probability"]) for p in got] == [
        (0, 1, pytest.approx(0.1)),
        (1, 2, pytest.approx(0.2)),
        (5, 9, 0.75),
    ]
    # An explicit chunk number replaces that chunk (idempotent), whatever it held.
    assert ledger.save_predictions(run_id=run, rows=first, chunk=1)["chunk"] == 1
    assert [p["probability"] for p in ledger.get_predictions(run_id=run)] == [
        pytest.approx(0.1),
        pytest.approx(0.9),
    ]
    assert chunk_rows(ledger_dsn, ledger.schema, run) == [(0, 2), (1, 2)]


def test_empty_unknown_and_malformed_batches(ledger: Ledger) -> None:
    run = new_run(ledger)
    assert ledger.save_predictions(run_id=run, rows=[]) == {
        "run_id": run,
        "saved": 0,
        "chunk": None,
    }
    assert ledger.get_predictions(run_id=run) == []
    assert ledger.get_predictions_packed(run_id=run) == {
        "run_id": run,
        "pairs": 0,
        "frame1": [],
        "frame2": [],
        "probability": [],
        "is_boundary": [],
    }
    with pytest.raises(RunNotFound):
        ledger.save_predictions(run_id=uuid.uuid4(), rows=pairs(1))
    bad = [
        {"frame1": [1, 2], "frame2": [2], "probability": [0.1, 0.2], "is_boundary": [1, 0]},
        {"frame1": [1], "frame2": [2], "probability": [0.1]},
        {"frame1": [1], "frame2": [2], "probability": [None], "is_boundary": [True]},
        42,  # neither columns nor rows
    ]
    for rows in bad:
        with pytest.raises(LedgerError) as info:
            ledger.transport.call("save_predictions", {"p_run_id": run, "p_rows": rows})
        assert info.value.code == "BI400", rows
    with pytest.raises(LedgerError) as info:
        ledger.save_predictions(run_id=run, rows=pairs(1), chunk=-1)
    assert info.value.code == "BI400"
    too_many = {k: [0] * 100_001 for k in ("frame1", "frame2", "probability")}
    too_many["is_boundary"] = [False] * 100_001
    with pytest.raises(LedgerError, match="100000 pairs") as info:
        ledger.transport.call("save_predictions", {"p_run_id": run, "p_rows": too_many})
    assert ledger.get_predictions(run_id=run) == []


def test_storage_and_wire_are_compact(ledger: Ledger, ledger_dsn: str) -> None:
    """A 25,000-pair job: under 15 bytes a pair stored (the old layout took about 100 with its
    index entry), and about a third of the JSON of one object per pair on the wire."""
    run = new_run(ledger)
    predictions = pairs(25_000, seed=7)
    save_in_batches(ledger, run, predictions, batch_pairs=5000)
    with psycopg.connect(ledger_dsn) as conn:
        (stored_bytes,) = conn.execute(
            sql.SQL("SELECT sum(pg_column_size(c.*)) FROM {} c WHERE run_id = %s").format(
                sql.Identifier(ledger.schema, "boundary_prediction_chunks")
            ),
            (run,),
        ).fetchone()
    assert stored_bytes / 25_000 < 15
    columns = json.dumps(pack(predictions))
    rows = json.dumps([vars(p) for p in predictions])
    assert len(columns) < len(rows) / 2.5


def test_retention_deletes_whole_old_runs_in_bounded_calls(ledger: Ledger, ledger_dsn: str) -> None:
    old = [new_run(ledger, f"old{i}") for i in range(5)]
    recent = new_run(ledger, "recent")
    for i, run in enumerate(old):
        for chunk in range(3):
            ledger.save_predictions(
                run_id=run, rows=pairs(5), chunk=chunk, now=T0 - dt.timedelta(days=40 + i)
            )
    ledger.save_predictions(run_id=recent, rows=pairs(5), now=T0 - dt.timedelta(days=3))
    # The two oldest runs, all their chunks.
    first = ledger.prune_predictions(keep_days=30, limit=2, now=T0)
    assert first["runs"] == 2 and first["chunks"] == 6 and first["more"] is True
    assert [ledger.get_predictions(run_id=r) == [] for r in old] == [
        False,
        False,
        False,
        True,
        True,
    ]
    rest = ledger.prune_predictions(keep_days=30, limit=100, now=T0)
    assert rest == {**rest, "runs": 3, "chunks": 9, "more": False}
    assert all(ledger.get_predictions(run_id=r) == [] for r in old)
    assert len(ledger.get_predictions(run_id=recent)) == 5
    assert ledger.get_run(run_id=old[0])["status"] == "queued"  # the run itself stays
    with pytest.raises(LedgerError) as info:
        ledger.prune_predictions(keep_days=-1)
    assert info.value.code == "BI400"


@pytest.fixture
def schema_before(pg_dsn: str, tmp_path: Path) -> Iterator[str]:
    """A schema migrated up to the migrations before the packed predictions."""
    with schema_migrated_before(pg_dsn, tmp_path, "20261130400000") as (schema, _):
        yield schema


def test_the_migration_packs_existing_rows(schema_before: str, pg_dsn: str) -> None:
    ledger = Ledger(PsycopgTransport(pg_dsn, schema_before, timeout_s=30))
    try:
        big, small = new_run(ledger, "big"), new_run(ledger, "small")
        rows = [vars(p) for p in pairs(12_001, seed=3)]
        for start in range(0, len(rows), 4000):  # the old function: one row per pair
            ledger.transport.call(
                "save_predictions", {"p_run_id": big, "p_rows": rows[start : start + 4000]}
            )
        ledger.transport.call("save_predictions", {"p_run_id": small, "p_rows": rows[:3]})
        before = {r: ledger.get_predictions(run_id=r) for r in (big, small)}

        apply_migrations(pg_dsn, schema_before)

        assert {r: ledger.get_predictions(run_id=r) for r in (big, small)} == before
        assert chunk_rows(pg_dsn, schema_before, big) == [(0, 5000), (1, 5000), (2, 2001)]
        assert chunk_rows(pg_dsn, schema_before, small) == [(0, 3)]
        with psycopg.connect(pg_dsn) as conn:
            (old_table,) = conn.execute(
                "SELECT to_regclass(%s)", (f"{schema_before}.boundary_predictions",)
            ).fetchone()
        assert old_table is None
        # New saves append after the migrated chunks.
        assert ledger.save_predictions(run_id=small, rows=pairs(1))["chunk"] == 1
    finally:
        ledger.close()
