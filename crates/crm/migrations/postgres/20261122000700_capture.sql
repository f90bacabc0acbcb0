-- Capture: rules that turn a site's tracking events into contacts, the hits already captured
-- (so a redelivered batch adds nothing twice), and each visitor's marketing touches (so a form
-- submitted pages after the landing still carries the landing's click ids and UTMs).

CREATE TABLE capture_rules (
    id              UUID PRIMARY KEY,
    workspace_id    UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    site_id         UUID NOT NULL,
    name            TEXT NOT NULL,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    event_name      TEXT NOT NULL,
    url_pattern     TEXT,
    conditions      TEXT NOT NULL DEFAULT '[]',
    mappings        TEXT NOT NULL DEFAULT '[]',
    tags            TEXT NOT NULL DEFAULT '[]',
    lifecycle_stage TEXT,
    matched_count   BIGINT NOT NULL DEFAULT 0,
    failed_count    BIGINT NOT NULL DEFAULT 0,
    last_matched_at TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX capture_rules_site ON capture_rules(site_id);
CREATE INDEX capture_rules_workspace ON capture_rules(workspace_id, id);

CREATE TABLE capture_processed (
    hit_id       UUID PRIMARY KEY,
    workspace_id UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX capture_processed_time ON capture_processed(processed_at);

CREATE TABLE visitor_touches (
    site_id      UUID NOT NULL,
    visitor      TEXT NOT NULL,
    workspace_id UUID NOT NULL,
    first_touch  TEXT NOT NULL,
    last_touch   TEXT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (site_id, visitor)
);
CREATE INDEX visitor_touches_time ON visitor_touches(updated_at);
