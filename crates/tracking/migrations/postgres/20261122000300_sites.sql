-- Sites (tracking properties), the hostnames they serve, and their daily usage counters.

CREATE TABLE sites (
    id                 UUID PRIMARY KEY,
    workspace_id       UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name               TEXT NOT NULL,
    hostnames          TEXT NOT NULL DEFAULT '[]',
    measurement_ids    TEXT NOT NULL DEFAULT '[]',
    web_container_id   TEXT,
    tagging_server_url TEXT,
    preview_server_url TEXT,
    allowed_origins    TEXT NOT NULL DEFAULT '[]',
    loader             TEXT NOT NULL DEFAULT '{}',
    write_key          TEXT NOT NULL UNIQUE,
    mp_secret_hash     TEXT NOT NULL,
    time_zone          TEXT NOT NULL DEFAULT 'UTC',
    truncate_ip        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX sites_workspace ON sites(workspace_id, id);

-- One row per served hostname: hostnames are unique across the whole deployment.
CREATE TABLE site_hostnames (
    hostname     TEXT PRIMARY KEY,
    site_id      UUID NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    workspace_id UUID NOT NULL
);
CREATE INDEX site_hostnames_site ON site_hostnames(site_id);

-- Counters per site, UTC day and metric (`accepted_requests`, `accepted_events`,
-- `rejected.<reason>`), added to by the gateway's periodic flush.
CREATE TABLE site_usage (
    site_id      UUID NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    workspace_id UUID NOT NULL,
    day          TEXT NOT NULL,
    metric       TEXT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (site_id, day, metric)
);
