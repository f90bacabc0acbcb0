-- Offline conversions: platform credentials (secrets sealed with the secret box), trigger
-- configs, the conversions they generate (one per trigger and source event id) and every
-- delivery attempt.

CREATE TABLE conversion_credentials (
    id            UUID PRIMARY KEY,
    workspace_id  UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    platform      TEXT NOT NULL CHECK (platform IN ('meta', 'data_manager', 'ga4')),
    name          TEXT NOT NULL,
    -- JSON of the non-secret settings (pixel id, accounts, measurement id).
    settings      TEXT NOT NULL,
    secret_sealed TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX conversion_credentials_workspace ON conversion_credentials(workspace_id, id);

CREATE TABLE conversion_triggers (
    id                  UUID PRIMARY KEY,
    workspace_id        UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    credential_id       UUID NOT NULL REFERENCES conversion_credentials(id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    source              TEXT NOT NULL CHECK (source IN ('tracking', 'crm', 'automation')),
    event               TEXT NOT NULL,
    platform_event_name TEXT NOT NULL,
    use_event_value     BOOLEAN NOT NULL,
    value               DOUBLE PRECISION,
    currency            TEXT,
    enabled             BOOLEAN NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX conversion_triggers_match ON conversion_triggers(workspace_id, source, event, enabled);

CREATE TABLE conversion_events (
    id              UUID PRIMARY KEY,
    workspace_id    UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    trigger_id      UUID REFERENCES conversion_triggers(id) ON DELETE SET NULL,
    credential_id   UUID NOT NULL REFERENCES conversion_credentials(id) ON DELETE CASCADE,
    platform        TEXT NOT NULL,
    -- The dedupe key sent to the platform (the browser hit's id for tracked conversions).
    event_id        TEXT NOT NULL,
    event_name      TEXT NOT NULL,
    contact_id      TEXT,
    -- JSON of `connect::conversions::Conversion` (identifiers in clear: never returned).
    payload         TEXT NOT NULL,
    value           DOUBLE PRECISION,
    currency        TEXT,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    claim           UUID,
    claimed_until   TIMESTAMPTZ,
    last_error      TEXT,
    sent_at         TIMESTAMPTZ,
    failed_at       TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
-- One conversion per credential and event id: a redelivered source event adds nothing.
CREATE UNIQUE INDEX conversion_events_dedupe ON conversion_events(credential_id, event_id);
CREATE INDEX conversion_events_due ON conversion_events(credential_id, status, next_attempt_at);
CREATE INDEX conversion_events_list ON conversion_events(workspace_id, id);

CREATE TABLE conversion_attempts (
    id              UUID PRIMARY KEY,
    workspace_id    UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    conversion_id   UUID NOT NULL REFERENCES conversion_events(id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('accepted', 'retry', 'rejected')),
    -- JSON summary of the request, without credentials.
    request         TEXT NOT NULL,
    response_status INTEGER,
    response        TEXT,
    error           TEXT,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX conversion_attempts_event ON conversion_attempts(conversion_id, id);
