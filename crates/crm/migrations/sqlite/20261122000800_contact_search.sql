-- Contact search and sorting: `search_text` (lower-cased names, emails, phones with and without
-- punctuation, company name) in an external-content FTS5 table with the trigram tokenizer
-- (substring search), kept in step by triggers; indexes for the list's filters and sort orders.

ALTER TABLE contacts ADD COLUMN search_text TEXT NOT NULL DEFAULT '';

CREATE VIRTUAL TABLE contact_search USING fts5(
    search_text, content = 'contacts', content_rowid = 'rowid', tokenize = 'trigram'
);
CREATE TRIGGER contacts_search_insert AFTER INSERT ON contacts BEGIN
    INSERT INTO contact_search(rowid, search_text) VALUES (new.rowid, new.search_text);
END;
CREATE TRIGGER contacts_search_delete AFTER DELETE ON contacts BEGIN
    INSERT INTO contact_search(contact_search, rowid, search_text) VALUES ('delete', old.rowid, old.search_text);
END;
CREATE TRIGGER contacts_search_update AFTER UPDATE OF search_text ON contacts BEGIN
    INSERT INTO contact_search(contact_search, rowid, search_text) VALUES ('delete', old.rowid, old.search_text);
    INSERT INTO contact_search(rowid, search_text) VALUES (new.rowid, new.search_text);
END;

CREATE INDEX contacts_stage ON contacts(workspace_id, lifecycle_stage, id);
CREATE INDEX contacts_owner ON contacts(workspace_id, owner_id, id);
CREATE INDEX contacts_updated ON contacts(workspace_id, updated_at, id);
CREATE INDEX contacts_score ON contacts(workspace_id, lead_score, id);

DROP INDEX contact_tags_tag;
CREATE INDEX contact_tags_tag ON contact_tags(workspace_id, tag, contact_id);
