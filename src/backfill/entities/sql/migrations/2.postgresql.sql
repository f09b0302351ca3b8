-- Schema version 2 on PostgreSQL: the words of every alias, for fuzzy candidates by
-- word (pg_trgm's GIN index on the distinct words, made by the store when pg_trgm is
-- there) rather than by whole name, whose index rechecked every alias sharing a common
-- first name's trigrams. A trigger keeps the words whoever writes an alias; the whole
-- file runs in one transaction.

CREATE TABLE IF NOT EXISTS bf_entity_words (
    kind TEXT NOT NULL,
    word TEXT NOT NULL
);
-- (word, kind), not (kind, word): a kind alone must not look like a way in to the
-- planner, whose way in is the trigram index on the word. Unique, so that a word is
-- added with ON CONFLICT DO NOTHING, which needs no plan: a check planned while the table
-- was empty (a new store's first aliases) walked every word for every alias after.
-- Transactions add their words in sorted order (an alias's norm is sorted; a load adds
-- all of its words first, see EntityStore.add_words), so two adding the same new words
-- wait for each other at most and never deadlock.
CREATE UNIQUE INDEX IF NOT EXISTS bf_entity_words_word ON bf_entity_words (word, kind);

CREATE TABLE IF NOT EXISTS bf_entity_alias_words (
    kind TEXT NOT NULL,
    word TEXT NOT NULL,
    alias_id BIGINT NOT NULL REFERENCES bf_entity_aliases (id) ON DELETE CASCADE,
    PRIMARY KEY (kind, word, alias_id)
);
CREATE INDEX IF NOT EXISTS bf_entity_alias_words_alias ON bf_entity_alias_words (alias_id);

CREATE OR REPLACE FUNCTION bf_entity_alias_words_add() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bf_entity_words (kind, word)
        SELECT DISTINCT NEW.kind, w FROM unnest(string_to_array(NEW.norm, ' ')) AS w
        ORDER BY 2
        ON CONFLICT DO NOTHING;
    INSERT INTO bf_entity_alias_words (kind, word, alias_id)
        SELECT DISTINCT NEW.kind, w, NEW.id FROM unnest(string_to_array(NEW.norm, ' ')) AS w;
    RETURN NULL;
END
$$;

-- Creating the trigger waits for the transactions writing aliases and holds off new ones
-- until this one commits, so the words copied below and the trigger miss no alias.
DROP TRIGGER IF EXISTS bf_entity_alias_words_add ON bf_entity_aliases;
CREATE TRIGGER bf_entity_alias_words_add AFTER INSERT ON bf_entity_aliases
    FOR EACH ROW EXECUTE FUNCTION bf_entity_alias_words_add();

INSERT INTO bf_entity_alias_words (kind, word, alias_id)
    SELECT DISTINCT a.kind, w, a.id FROM bf_entity_aliases a,
        unnest(string_to_array(a.norm, ' ')) AS w
    ON CONFLICT DO NOTHING;
INSERT INTO bf_entity_words (kind, word)
    SELECT DISTINCT kind, word FROM bf_entity_alias_words ORDER BY word, kind
    ON CONFLICT DO NOTHING;

-- Version 1's trigram index on whole names: no longer read.
DROP INDEX IF EXISTS bf_entity_aliases_trgm;

-- The planner's statistics of the words copied: without them it may walk every word of
-- a kind rather than use the trigram index.
ANALYZE bf_entity_words;
ANALYZE bf_entity_alias_words;
