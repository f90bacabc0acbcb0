-- Outbound signed webhooks (Standard Webhooks): endpoints per workspace, one message per
-- (endpoint, domain event), and the log of every delivery attempt. Secrets are sealed with the
-- secret box; the previous secret stays valid until `previous_secret_expires_at` after a rotation.

CREATE TABLE webhook_endpoints (
    id                         UUID PRIMARY KEY,
    workspace_id               UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    url                        TEXT NOT NULL,
    description                TEXT NOT NULL DEFAULT '',
    -- JSON array of exact types, `prefix.*` or `*`.
    event_types                TEXT NOT NULL,
    enabled                    BOOLEAN NOT NULL,
    disabled_reason            TEXT CHECK (disabled_reason IN ('manual', 'gone', 'failing')),
    secret_sealed              TEXT NOT NULL,
    previous_secret_sealed     TEXT,
    previous_secret_expires_at TIMESTAMPTZ,
    -- Start of the current run of failed attempts; cleared by a success.
    failing_since              TIMESTAMPTZ,
    last_success_at            TIMESTAMPTZ,
    last_failure_at            TIMESTAMPTZ,
    created_at                 TIMESTAMPTZ NOT NULL,
    updated_at                 TIMESTAMPTZ NOT NULL
);
-- Fan-out reads a workspace's enabled endpoints in one query.
CREATE INDEX webhook_endpoints_workspace ON webhook_endpoints(workspace_id, enabled, id);

CREATE TABLE webhook_messages (
    id              UUID PRIMARY KEY,
    workspace_id    UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    endpoint_id     UUID NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_id        UUID NOT NULL,
    event_type      TEXT NOT NULL,
    -- The JSON body, fixed at creation so every attempt sends the same bytes.
    body            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- Attempts made before the current delivery cycle (a resend or recover starts a new one).
    cycle_start     INTEGER NOT NULL DEFAULT 0,
    -- Bumped by every resend or recover, so jobs of an earlier cycle do nothing.
    generation      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    last_attempt_at TIMESTAMPTZ,
    delivered_at    TIMESTAMPTZ,
    failed_at       TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
-- One message per (endpoint, event): the fan-out is idempotent.
CREATE UNIQUE INDEX webhook_messages_event ON webhook_messages(endpoint_id, event_id);
CREATE INDEX webhook_messages_list ON webhook_messages(workspace_id, endpoint_id, id);
CREATE INDEX webhook_messages_status ON webhook_messages(endpoint_id, status, created_at);

CREATE TABLE webhook_attempts (
    id              UUID PRIMARY KEY,
    workspace_id    UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    endpoint_id     UUID NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    message_id      UUID NOT NULL REFERENCES webhook_messages(id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
    url             TEXT NOT NULL,
    response_status INTEGER,
    -- At most 1 KB of the response body.
    response        TEXT,
    error           TEXT,
    latency_ms      BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhook_attempts_message ON webhook_attempts(message_id, id);
