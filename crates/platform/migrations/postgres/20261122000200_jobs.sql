-- The job queue, the transactional outbox and cron schedules (see src/jobs, src/outbox.rs,
-- src/cron.rs). Payloads are JSON kept as TEXT on both backends so one binding serves both.

-- No foreign key to workspaces: a job may be enqueued in the very transaction that deletes its
-- workspace (clean-up, "workspace.deleted" deliveries), and must survive it.
CREATE TABLE jobs (
    id           UUID PRIMARY KEY,
    workspace_id UUID,
    queue        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    status       TEXT NOT NULL
                 CHECK (status IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    priority     INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    -- NULL: the deployment default (jobs.max_attempts).
    max_attempts INTEGER CHECK (max_attempts >= 1),
    run_at       TIMESTAMPTZ NOT NULL,
    lock_id      UUID,
    locked_until TIMESTAMPTZ,
    heartbeat_at TIMESTAMPTZ,
    last_error   TEXT,
    unique_key   TEXT UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ,
    -- A lease and the running state come and go together; fenced writes rely on it.
    CHECK ((status = 'running') = (lock_id IS NOT NULL))
);
-- Leasing: due jobs of a queue.
CREATE INDEX jobs_ready ON jobs (queue, run_at) WHERE status = 'queued';
-- Leasing: running jobs per workspace (the per-workspace limit).
CREATE INDEX jobs_running_workspace ON jobs (workspace_id) WHERE status = 'running';
-- Janitor: expired leases.
CREATE INDEX jobs_running_lease ON jobs (locked_until) WHERE status = 'running';
-- API lists, newest first.
CREATE INDEX jobs_workspace ON jobs (workspace_id, id);
-- Pruning finished jobs.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- Domain events written in the transaction of the change they describe. No foreign key to
-- workspaces, for the same reason as jobs ("workspace.deleted" is published as it is deleted).
CREATE TABLE outbox_events (
    id           UUID PRIMARY KEY,
    workspace_id UUID,
    event_type   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    relayed_at   TIMESTAMPTZ
);
CREATE INDEX outbox_events_unrelayed ON outbox_events (id) WHERE relayed_at IS NULL;
CREATE INDEX outbox_events_relayed ON outbox_events (relayed_at) WHERE relayed_at IS NOT NULL;

-- Which consumer has handled which event, so a redelivered job skips the consumer.
CREATE TABLE outbox_processed (
    consumer     TEXT NOT NULL,
    event_id     UUID NOT NULL REFERENCES outbox_events(id) ON DELETE CASCADE,
    processed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX outbox_processed_event ON outbox_processed (event_id);

CREATE TABLE schedules (
    id           UUID PRIMARY KEY,
    -- NULL: a system schedule.
    workspace_id UUID REFERENCES workspaces(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    cron         TEXT NOT NULL,
    time_zone    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    queue        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    enabled      BOOLEAN NOT NULL,
    next_run_at  TIMESTAMPTZ NOT NULL,
    last_run_at  TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
-- Names are unique per owner; two indexes because NULLs are distinct in a UNIQUE index.
CREATE UNIQUE INDEX schedules_workspace_name ON schedules (workspace_id, name)
    WHERE workspace_id IS NOT NULL;
CREATE UNIQUE INDEX schedules_system_name ON schedules (name) WHERE workspace_id IS NULL;
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE enabled;
