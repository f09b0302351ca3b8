-- The entity tables of every kind, beside the sink. {id_type} is the dialect's
-- auto-numbered primary key; every statement is idempotent (run at each open).
-- Schema version 1 (bf_entity_schema); a later version adds files of migrations.

CREATE TABLE IF NOT EXISTS bf_entities (
    id {id_type},
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    features TEXT NOT NULL DEFAULT '{{}}',
    provisional INTEGER NOT NULL DEFAULT 0,
    merged_into BIGINT,
    created_at TEXT NOT NULL,
    UNIQUE (kind, key)
);
CREATE TABLE IF NOT EXISTS bf_entity_aliases (
    id {id_type},
    kind TEXT NOT NULL,
    entity_id BIGINT NOT NULL REFERENCES bf_entities (id),
    name TEXT NOT NULL,
    norm TEXT NOT NULL,
    source TEXT NOT NULL,
    external_id TEXT,
    method TEXT NOT NULL,
    score REAL,
    created_at TEXT NOT NULL,
    UNIQUE (kind, norm, source, entity_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS bf_entity_aliases_external
    ON bf_entity_aliases (kind, source, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS bf_entity_aliases_entity ON bf_entity_aliases (entity_id);
CREATE INDEX IF NOT EXISTS bf_entities_merged ON bf_entities (kind, merged_into);
CREATE TABLE IF NOT EXISTS bf_entity_reviews (
    id {id_type},
    kind TEXT NOT NULL,
    entity_id BIGINT NOT NULL,
    alias_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    score REAL NOT NULL,
    candidates TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    decided_entity BIGINT,
    created_at TEXT NOT NULL,
    decided_at TEXT
);
CREATE INDEX IF NOT EXISTS bf_entity_reviews_status ON bf_entity_reviews (kind, status);
;
CREATE TABLE IF NOT EXISTS bf_entity_schema (
    version INTEGER NOT NULL
);
