-- CSV imports of contacts: the uploaded file, its mapping and progress, and the rows that failed.
-- Counters move in the transaction of the rows they count, so a resumed job never counts twice.

CREATE TABLE contact_imports (
    id                BLOB PRIMARY KEY,
    workspace_id      BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    status            TEXT NOT NULL DEFAULT 'uploaded'
                      CHECK (status IN ('uploaded', 'queued', 'running', 'completed', 'failed')),
    file_name         TEXT,
    -- The file as uploaded (UTF-8, byte order mark removed) and its field separator.
    csv_text          TEXT NOT NULL,
    separator         TEXT NOT NULL DEFAULT ',',
    -- JSON: the header, the first rows, the mapping suggested at upload.
    column_names      TEXT NOT NULL,
    sample_rows       TEXT NOT NULL,
    suggested_mapping TEXT NOT NULL,
    -- JSON, set when the import is started: column → target, and tags added to every row.
    mapping           TEXT,
    tags              TEXT NOT NULL DEFAULT '[]',
    total_rows        INTEGER NOT NULL,
    processed_rows    INTEGER NOT NULL DEFAULT 0,
    created_count     INTEGER NOT NULL DEFAULT 0,
    updated_count     INTEGER NOT NULL DEFAULT 0,
    merged_count      INTEGER NOT NULL DEFAULT 0,
    failed_count      INTEGER NOT NULL DEFAULT 0,
    -- Why a failed import stopped.
    error             TEXT,
    job_id            BLOB,
    created_by        TEXT,
    started_by        TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    started_at        TEXT,
    finished_at       TEXT
);
CREATE INDEX contact_imports_workspace ON contact_imports(workspace_id, id);

-- One row per rejected CSV row; `row_no` counts the header as row 1, like a spreadsheet.
CREATE TABLE contact_import_errors (
    import_id    BLOB NOT NULL REFERENCES contact_imports(id) ON DELETE CASCADE,
    workspace_id BLOB NOT NULL,
    row_no       INTEGER NOT NULL,
    column_name  TEXT,
    message      TEXT NOT NULL,
    PRIMARY KEY (import_id, row_no)
);
