"""The durable feedback store (the kernel: the service writes it, the feedback flow reads it): generations, ratings, corrections, preferences, and retrain claims.

One SQLAlchemy Core schema on two back ends: SQLite in WAL mode (the default, a file under
`$LLMFLOW_HOME/feedback/`) and PostgreSQL by URL (`postgresql://user@host/db`, driven by psycopg).
Every write is one short transaction, so nothing is lost under concurrent writers: SQLite takes
the write lock up front (`BEGIN IMMEDIATE`) and waits on a busy timeout instead of failing;
PostgreSQL serialises through row locks and a unique index.

Ratings: `scale="thumbs"` takes -1, 0, 1; `scale="stars"` takes 1..5. Both are stored as given and
as a `score` in [-1, 1] (stars: (r - 3) / 2); a score below 0 is a negative rating.

The feedback loop: `claim_retrain` looks at the feedback no retrain has taken yet and, when it
passes the threshold (a count, or a rate of negative ratings over enough ratings), atomically
records one `pending` retrain that takes those rows. At most one retrain per model is pending (a
partial unique index enforces it, across processes and hosts); a new one waits for the cooldown
after the last; a pending retrain ends with `finish_retrain`, when the champion changes, or after
its timeout. Rows are marked with the retrain that took them rather than compared with an id
watermark, because PostgreSQL ids are not committed in order: a late commit is taken next time.

Exports: corrections become supervised examples `{id, prompt, response}` (the task_data JSONL
contract, so a fine-tune reads them like any task file) and preferred or corrected answers become
preference triples `{id, prompt, chosen, rejected}` with the served answer as `rejected`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from llmflow.store import ArtifactStore, default_home, step_key

EXPORT_STEP = "feedback"
EXPORT_VERSION = 1
SCALES = {"thumbs": (-1, 1), "stars": (1, 5)}


def resolve_url(url: str | None = None, home: str | None = None) -> str:
    """The SQLAlchemy URL: `url`, else $LLMFLOW_FEEDBACK_URL, else SQLite under LLMFLOW_HOME.

    `postgresql://` and `postgres://` select the psycopg driver; a bare path means SQLite.
    """
    url = url or os.environ.get("LLMFLOW_FEEDBACK_URL") or None
    if url is None:
        base = str(home) if home is not None else default_home()
        if "://" in base:
            raise ValueError(
                f"LLMFLOW_HOME={base} is not a local folder, so the feedback store cannot be a SQLite "
                "file there: set serve.feedback_url (or LLMFLOW_FEEDBACK_URL) to a database URL"
            )
        path = Path(base, "feedback", "feedback.db").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(url).resolve()}"
    return url


def normalize_rating(rating: int, scale: str = "thumbs") -> float:
    """A rating on its scale -> a score in [-1, 1]. Raises ValueError outside the scale."""
    if scale not in SCALES:
        raise ValueError(f"unknown rating scale {scale!r} (thumbs or stars)")
    lo, hi = SCALES[scale]
    if not lo <= rating <= hi:
        raise ValueError(f"a {scale} rating is between {lo} and {hi}, got {rating}")
    return float(rating) if scale == "thumbs" else (rating - 3) / 2


@dataclass(frozen=True)
class ThresholdPolicy:
    """When new feedback asks for a retrain. `None` turns a criterion off."""

    count: int | None = 100
    negative_rate: float | None = 0.3
    min_ratings: int = 20
    cooldown_seconds: float = 3600.0
    timeout_seconds: float = 6 * 3600.0

    @classmethod
    def from_config(cls, serve: Any) -> ThresholdPolicy:
        return cls(
            count=serve.threshold_count,
            negative_rate=serve.threshold_negative_rate,
            min_ratings=serve.min_ratings_for_rate,
            cooldown_seconds=serve.cooldown_seconds,
            timeout_seconds=serve.retrain_timeout_seconds,
        )

    def reason(self, stats: dict[str, Any]) -> str | None:
        """Why `stats` (of the new feedback) passes the threshold, or None."""
        if self.count is not None and stats["new"] >= self.count:
            return f"count: {stats['new']} new feedback >= {self.count}"
        rated = stats["rated"]
        if self.negative_rate is not None and rated >= self.min_ratings and rated > 0:
            rate = stats["negative"] / rated
            if rate >= self.negative_rate:
                return f"negative_rate: {rate:.2f} of {rated} ratings >= {self.negative_rate}"
        return None


def _schema(prefix: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    md = sa.MetaData()
    gen = sa.Table(
        f"{prefix}generations",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("model_version", sa.String(200), nullable=False, index=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False, default="{}"),
        sa.Column("created", sa.Float, nullable=False),
    )
    fb = sa.Table(
        f"{prefix}feedback",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("generation_id", sa.String(32), nullable=True),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("rating", sa.Integer, nullable=True),
        sa.Column("scale", sa.String(8), nullable=True),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("correction", sa.Text, nullable=True),
        sa.Column("preferred", sa.Text, nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("retrain_id", sa.Integer, nullable=True, index=True),
    )
    rt = sa.Table(
        f"{prefix}retrains",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # pending | done | failed | abandoned
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("stats", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("finished", sa.Float, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
    )
    pending = rt.c.status == sa.literal_column("'pending'")
    sa.Index(
        f"{prefix}retrains_one_pending",
        rt.c.model_name,
        unique=True,
        sqlite_where=pending,
        postgresql_where=pending,
    )
    return md, gen, fb, rt


class FeedbackStore:
    """Feedback in a SQL database. Thread-safe; open one per process."""

    def __init__(self, url: str | None = None, *, home: str | None = None, prefix: str = "llmflow_"):
        if not prefix.replace("_", "").isalnum():
            raise ValueError(f"table prefix must be letters, digits and underscores, got {prefix!r}")
        self.url = resolve_url(url, home)
        self.prefix = prefix
        self.engine = _engine(self.url)
        self.md, self.generations, self.feedback, self.retrains = _schema(prefix)
        with self.engine.begin() as c:
            if c.dialect.name == "postgresql":  # concurrent first starts: create the tables once
                c.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": prefix})
            self.md.create_all(c)

    @property
    def display_url(self) -> str:
        """The URL with any password hidden (for logs and event payloads)."""
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def drop(self) -> None:
        """Remove this store's tables (tests)."""
        self.md.drop_all(self.engine)

    def _read(self):
        return self.engine.connect().execution_options(llmflow_read=True)

    # ----------------------------------------------------------------- generations

    def record_generation(
        self,
        model_version: str,
        prompt: str,
        response: str,
        params: dict[str, Any] | None = None,
        gid: str | None = None,
    ) -> str:
        """Keep a served answer for feedback; returns its id (`gid`, given when the client was told
        the id before the answer was complete, as a stream does; else a new one)."""
        gid = gid or new_generation_id()
        with self.engine.begin() as c:
            c.execute(
                self.generations.insert().values(
                    id=gid,
                    model_version=str(model_version),
                    prompt=prompt,
                    response=response,
                    params=json.dumps(params or {}, sort_keys=True),
                    created=time.time(),
                )
            )
        return gid

    def get_generation(self, gid: str) -> dict[str, Any] | None:
        with self._read() as c:
            row = (
                c.execute(sa.select(self.generations).where(self.generations.c.id == gid)).mappings().first()
            )
        return dict(row) if row else None

    def known_version(self, model_version: str) -> bool:
        """Whether this store has served `model_version`."""
        q = sa.select(self.generations.c.id).where(self.generations.c.model_version == str(model_version))
        with self._read() as c:
            return c.execute(q.limit(1)).first() is not None

    # ----------------------------------------------------------------- feedback

    def add_feedback(
        self,
        *,
        model_version: str,
        prompt: str,
        response: str,
        rating: int | None = None,
        scale: str = "thumbs",
        correction: str | None = None,
        preferred: str | None = None,
        generation_id: str | None = None,
    ) -> int:
        """Store one feedback item; returns its id. Raises ValueError for an empty or bad item."""
        if rating is None and not correction and not preferred:
            raise ValueError("feedback needs a rating, a correction or a preferred response")
        score = normalize_rating(rating, scale) if rating is not None else None
        with self.engine.begin() as c:
            res = c.execute(
                self.feedback.insert().values(
                    generation_id=generation_id,
                    model_version=str(model_version),
                    prompt=prompt,
                    response=response,
                    rating=rating,
                    scale=scale if rating is not None else None,
                    score=score,
                    correction=correction or None,
                    preferred=preferred or None,
                    created=time.time(),
                )
            )
            return int(res.inserted_primary_key[0])

    def count(self) -> int:
        with self._read() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(self.feedback)).scalar_one())

    def _stats(self, c: sa.Connection, where: Any) -> dict[str, Any]:
        fb = self.feedback
        q = sa.select(
            sa.func.count(),
            sa.func.count(fb.c.score),
            sa.func.sum(sa.case((fb.c.score < 0, 1), else_=0)),
            sa.func.count(fb.c.correction),
            sa.func.count(fb.c.preferred),
        ).where(where)
        n, rated, negative, corrections, preferred = c.execute(q).one()
        negative = int(negative or 0)
        return {
            "new": int(n),
            "rated": int(rated),
            "negative": negative,
            "negative_rate": round(negative / rated, 4) if rated else 0.0,
            "corrections": int(corrections),
            "preferred": int(preferred),
        }

    def stats(self, model_name: str | None = None) -> dict[str, Any]:
        """Totals, the feedback not yet taken by a retrain, and the pending retrain if any."""
        with self._read() as c:
            out = self._stats(c, self.feedback.c.retrain_id.is_(None))
            out["total"] = int(c.execute(sa.select(sa.func.count()).select_from(self.feedback)).scalar_one())
            q = sa.select(self.retrains).where(self.retrains.c.status == "pending")
            if model_name is not None:
                q = q.where(self.retrains.c.model_name == model_name)
            pending = c.execute(q).mappings().first()
        out["pending_retrain"] = _retrain_dict(pending) if pending else None
        return out

    # ----------------------------------------------------------------- retrains

    def claim_retrain(
        self, policy: ThresholdPolicy, model_name: str, now: float | None = None
    ) -> dict[str, Any] | None:
        """Record a pending retrain when the new feedback passes the threshold; else None.

        Atomic: of any number of concurrent callers, at most one gets the retrain.
        """
        now = time.time() if now is None else now
        rt, fb = self.retrains, self.feedback
        try:
            with self.engine.begin() as c:
                mine = rt.c.model_name == model_name
                pending = c.execute(sa.select(rt).where(mine, rt.c.status == "pending")).mappings().first()
                if pending is not None:
                    if now - pending["created"] < policy.timeout_seconds:
                        return None
                    c.execute(
                        rt.update()
                        .where(rt.c.id == pending["id"])
                        .values(status="abandoned", finished=now, note="timed out")
                    )
                last = c.execute(sa.select(sa.func.max(rt.c.created)).where(mine)).scalar()
                if last is not None and now - last < policy.cooldown_seconds:
                    return None
                stats = self._stats(c, fb.c.retrain_id.is_(None))
                reason = policy.reason(stats)
                if reason is None:
                    return None
                rid = c.execute(
                    rt.insert().values(
                        model_name=model_name,
                        status="pending",
                        reason=reason,
                        stats=json.dumps(stats),
                        created=now,
                    )
                ).inserted_primary_key[0]
                taken = c.execute(fb.update().where(fb.c.retrain_id.is_(None)).values(retrain_id=rid))
                stats["new"] = taken.rowcount  # rows committed since the count are taken too
        except IntegrityError:  # another process holds the pending retrain
            return None
        return {"id": int(rid), "model_name": model_name, "reason": reason, "stats": stats, "created": now}

    def finish_retrain(self, retrain_id: int, status: str = "done", note: str | None = None) -> None:
        """End a pending retrain (`done`, `failed`). Its feedback stays taken."""
        if status not in ("done", "failed", "abandoned"):
            raise ValueError(f"a retrain ends as done, failed or abandoned, not {status!r}")
        rt = self.retrains
        with self.engine.begin() as c:
            c.execute(
                rt.update()
                .where(rt.c.id == retrain_id, rt.c.status == "pending")
                .values(status=status, finished=time.time(), note=note)
            )

    def release_retrain(self, retrain_id: int, note: str) -> None:
        """Undo a claim that could not be announced: its feedback counts as new again, no cooldown."""
        rt, fb = self.retrains, self.feedback
        with self.engine.begin() as c:
            c.execute(fb.update().where(fb.c.retrain_id == retrain_id).values(retrain_id=None))
            c.execute(rt.delete().where(rt.c.id == retrain_id, rt.c.status == "pending"))

    def finish_pending(self, model_name: str, status: str = "done", note: str | None = None) -> int:
        """End the model's pending retrain (e.g. when a new champion is served); returns how many."""
        rt = self.retrains
        with self.engine.begin() as c:
            res = c.execute(
                rt.update()
                .where(rt.c.model_name == model_name, rt.c.status == "pending")
                .values(status=status, finished=time.time(), note=note)
            )
            return res.rowcount

    def retrains_list(self, model_name: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(self.retrains).order_by(self.retrains.c.id)
        if model_name is not None:
            q = q.where(self.retrains.c.model_name == model_name)
        with self._read() as c:
            return [_retrain_dict(r) for r in c.execute(q).mappings()]

    # ----------------------------------------------------------------- export

    def examples(self, retrain_id: int | None = None) -> tuple[list[dict], list[dict]]:
        """(supervised examples, preference triples) of one retrain's feedback, or of all feedback."""
        fb = self.feedback
        q = sa.select(fb).order_by(fb.c.id)
        if retrain_id is not None:
            q = q.where(fb.c.retrain_id == retrain_id)
        sft: list[dict] = []
        prefs: list[dict] = []
        with self._read() as c:
            for r in c.execute(q).mappings():
                base = {"prompt": r["prompt"], "model_version": r["model_version"]}
                if r["correction"]:
                    sft.append({"id": f"feedback-{r['id']}", **base, "response": r["correction"]})
                for kind in ("preferred", "correction"):
                    chosen = r[kind]
                    if chosen and chosen != r["response"]:
                        prefs.append(
                            {
                                "id": f"feedback-{r['id']}-{kind}",
                                **base,
                                "chosen": chosen,
                                "rejected": r["response"],
                            }
                        )
        return sft, prefs

    def export(self, store: ArtifactStore, retrain_id: int | None = None) -> dict[str, Any]:
        """Write `sft.jsonl` and `preferences.jsonl` as a `feedback` artifact; returns where.

        The artifact key names this store and the retrain, so the fine-tune that reads it is
        cached like any other step and a re-export of the same retrain reuses the artifact.
        """
        sft, prefs = self.examples(retrain_id)
        ident = {"store": self.display_url, "prefix": self.prefix}
        key = step_key(
            EXPORT_STEP, EXPORT_VERSION, ident, extra={"retrain": retrain_id, "n": len(sft) + len(prefs)}
        )
        stats = {"retrain_id": retrain_id, "sft_examples": len(sft), "preference_pairs": len(prefs)}
        if not store.exists(EXPORT_STEP, key):
            manifest = {"version": str(EXPORT_VERSION), "config": ident, "stats": stats}
            with store.write(EXPORT_STEP, key, manifest) as out:
                _write_jsonl(out / "sft.jsonl", sft)
                _write_jsonl(out / "preferences.jsonl", prefs)
                (out / "report.md").write_text(
                    f"# Feedback export\n\nRetrain {retrain_id}: {len(sft)} supervised examples from "
                    f"corrections, {len(prefs)} preference pairs.\n"
                )
        uri = store.uri(EXPORT_STEP, key)
        return {
            **stats,
            "step": EXPORT_STEP,
            "key": key,
            "uri": uri,
            "sft_path": f"{uri}/sft.jsonl",
            "preferences_path": f"{uri}/preferences.jsonl",
        }


def new_generation_id() -> str:
    return uuid.uuid4().hex


def _retrain_dict(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["stats"] = json.loads(d["stats"]) if d.get("stats") else {}
    return d


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below rule transactions
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):
            # Writers take the lock up front, so the busy timeout applies instead of a deadlock
            # error when two deferred transactions both try to upgrade to writing.
            read = conn.get_execution_options().get("llmflow_read", False)
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
