-- Where a site's traffic is forwarded: the customer's own sGTM tagging server, GA4 (Measurement
-- Protocol) or any HTTP endpoint. Secrets in `config_sealed` are sealed with the secret box.

CREATE TABLE destinations (
    id              BLOB PRIMARY KEY,
    workspace_id    BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    site_id         BLOB NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN ('tagging_server', 'ga4', 'http')),
    name            TEXT NOT NULL,
    url             TEXT NOT NULL,
    measurement_id  TEXT,
    config_sealed   TEXT,
    enabled         INTEGER NOT NULL,
    delivered       INTEGER NOT NULL DEFAULT 0,
    failed          INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    last_success_at TEXT,
    last_failure_at TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX destinations_site ON destinations(site_id);
CREATE INDEX destinations_workspace ON destinations(workspace_id, id);
