-- Contact search and sorting: `search_text` (lower-cased names, emails, phones with and without
-- punctuation, company name) with a trigram index for substring search, and indexes for the
-- list's filters and sort orders.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE contacts ADD COLUMN search_text TEXT NOT NULL DEFAULT '';
CREATE INDEX contacts_search ON contacts USING gin (search_text gin_trgm_ops);

CREATE INDEX contacts_stage ON contacts(workspace_id, lifecycle_stage, id);
CREATE INDEX contacts_owner ON contacts(workspace_id, owner_id, id);
CREATE INDEX contacts_updated ON contacts(workspace_id, updated_at, id);
CREATE INDEX contacts_score ON contacts(workspace_id, lead_score, id);

DROP INDEX contact_tags_tag;
CREATE INDEX contact_tags_tag ON contact_tags(workspace_id, tag, contact_id);
