-- Where a site's traffic is forwarded: the customer's own sGTM tagging server, GA4 (Measurement
-- Protocol) or any HTTP endpoint. Secrets in `config_sealed` are sealed with the secret box.

CREATE TABLE destinations (
    id              UUID PRIMARY KEY,
    workspace_id    UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    site_id         UUID NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN ('tagging_server', 'ga4', 'http')),
    name            TEXT NOT NULL,
    url             TEXT NOT NULL,
    measurement_id  TEXT,
    config_sealed   TEXT,
    enabled         BOOLEAN NOT NULL,
    delivered       BIGINT NOT NULL DEFAULT 0,
    failed          BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    last_success_at TIMESTAMPTZ,
    last_failure_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX destinations_site ON destinations(site_id);
CREATE INDEX destinations_workspace ON destinations(workspace_id, id);
