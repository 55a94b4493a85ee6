"""corpora: one row per upload (file name, uploader, server), identical texts sharing the blob.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

corpora.sha256 was unique, so a second server uploading the same text got the first server's row (and its
file name). The unique constraint becomes a plain index, and every persona that used a corpus uploaded in
another server (or by the deployment) gets its own row for it: the same blob and statistics, its own server
and uploader, and a neutral file name (the name it was uploaded under was never recorded). Its links and
runs move to that row. Downgrade merges rows of the same text back into the oldest one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEUTRAL_FILENAME = "upload.txt"
COPIED = ("sha256", "raw_sha256", "storage_key", "encoding", "n_bytes", "n_chars", "n_lines", "n_words",
          "n_unique_chars", "n_unique_words", "stats", "created_at")

corpora = sa.table("corpora", sa.column("id", sa.Integer), sa.column("filename", sa.String),
                   sa.column("uploaded_by", sa.BigInteger), sa.column("guild_id", sa.BigInteger),
                   *[sa.column(c) for c in COPIED])
personas = sa.table("personas", sa.column("id", sa.Integer), sa.column("guild_id", sa.BigInteger))
links = sa.table("persona_corpora", sa.column("persona_id", sa.Integer), sa.column("corpus_id", sa.Integer),
                 sa.column("added_by", sa.BigInteger))
runs = sa.table("training_runs", sa.column("id", sa.Integer), sa.column("persona_id", sa.Integer),
                sa.column("corpus_id", sa.Integer), sa.column("requested_by", sa.BigInteger))


def _foreign_pairs(conn) -> dict[tuple[int, int], int | None]:
    """(persona, corpus) pairs, by link or by run, where the corpus was uploaded outside the persona's server:
    the user to record as the uploader of the persona's own row."""
    other_guild = sa.or_(sa.and_(personas.c.guild_id.is_(None), corpora.c.guild_id.is_not(None)),
                         sa.and_(personas.c.guild_id.is_not(None), corpora.c.guild_id.is_(None)),
                         personas.c.guild_id != corpora.c.guild_id)
    pairs: dict[tuple[int, int], int | None] = {}
    for table, user in ((links, links.c.added_by), (runs, runs.c.requested_by)):
        rows = conn.execute(sa.select(table.c.persona_id, table.c.corpus_id, user)
                            .join(personas, personas.c.id == table.c.persona_id)
                            .join(corpora, corpora.c.id == table.c.corpus_id).where(other_guild))
        for persona_id, corpus_id, by in rows:
            pairs.setdefault((persona_id, corpus_id), by)
    return pairs


def upgrade() -> None:
    with op.batch_alter_table("corpora") as batch:
        batch.drop_constraint("uq_corpora_sha256", type_="unique")
        batch.create_index(batch.f("ix_corpora_sha256"), ["sha256"])
    conn = op.get_bind()
    pairs = _foreign_pairs(conn)
    for (persona_id, corpus_id), by in pairs.items():
        source = conn.execute(sa.select(*[corpora.c[c] for c in COPIED]).where(corpora.c.id == corpus_id)).one()
        guild = conn.execute(sa.select(personas.c.guild_id).where(personas.c.id == persona_id)).scalar()
        new_id = conn.execute(sa.insert(corpora).values(**dict(source._mapping), filename=NEUTRAL_FILENAME,
                                                        uploaded_by=by, guild_id=guild)
                              .returning(corpora.c.id)).scalar_one()
        conn.execute(sa.update(links).where(links.c.persona_id == persona_id, links.c.corpus_id == corpus_id)
                     .values(corpus_id=new_id))
        conn.execute(sa.update(runs).where(runs.c.persona_id == persona_id, runs.c.corpus_id == corpus_id)
                     .values(corpus_id=new_id))
    for corpus_id in {c for _, c in pairs}:  # an upload only other servers used: nobody's row any more
        linked = conn.execute(sa.select(links.c.corpus_id).where(links.c.corpus_id == corpus_id).limit(1)).first()
        ran = conn.execute(sa.select(runs.c.id).where(runs.c.corpus_id == corpus_id).limit(1)).first()
        if linked is None and ran is None:
            conn.execute(sa.delete(corpora).where(corpora.c.id == corpus_id))


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(corpora.c.id, corpora.c.sha256).order_by(corpora.c.id)).all()
    first: dict[str, int] = {}
    for corpus_id, sha in rows:
        keep = first.setdefault(sha, corpus_id)
        if keep == corpus_id:
            continue
        for persona_id in conn.execute(sa.select(links.c.persona_id).where(links.c.corpus_id == corpus_id)).scalars():
            conn.execute(sa.delete(links).where(links.c.persona_id == persona_id, links.c.corpus_id == keep))
        conn.execute(sa.update(links).where(links.c.corpus_id == corpus_id).values(corpus_id=keep))
        conn.execute(sa.update(runs).where(runs.c.corpus_id == corpus_id).values(corpus_id=keep))
        conn.execute(sa.delete(corpora).where(corpora.c.id == corpus_id))
    with op.batch_alter_table("corpora") as batch:
        batch.drop_index(batch.f("ix_corpora_sha256"))
        batch.create_unique_constraint(batch.f("uq_corpora_sha256"), ["sha256"])
