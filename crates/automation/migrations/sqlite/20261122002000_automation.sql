-- Automation rules, their immutable versions, the trigger index the outbox consumer reads, and
-- runs with one row per executed step.

CREATE TABLE automations (
    id              BLOB PRIMARY KEY,
    workspace_id    BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    enabled         INTEGER NOT NULL,
    current_version INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX automations_workspace ON automations(workspace_id, id);

-- Every saved definition; a run keeps executing the version it started with.
CREATE TABLE automation_versions (
    automation_id BLOB NOT NULL REFERENCES automations(id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    workspace_id  BLOB NOT NULL,
    definition    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (automation_id, version)
);

-- Enabled rules by trigger key (`event:contact.created`, `custom:deal_won`): one indexed read
-- per outbox event, however many rules a workspace has.
CREATE TABLE automation_triggers (
    workspace_id  BLOB NOT NULL,
    trigger_key   TEXT NOT NULL,
    automation_id BLOB NOT NULL REFERENCES automations(id) ON DELETE CASCADE,
    PRIMARY KEY (workspace_id, trigger_key, automation_id)
);

CREATE TABLE automation_runs (
    id               BLOB PRIMARY KEY,
    workspace_id     BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    automation_id    BLOB NOT NULL REFERENCES automations(id) ON DELETE CASCADE,
    version          INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('running', 'waiting', 'succeeded', 'failed', 'skipped')),
    contact_id       BLOB,
    trigger_key      TEXT NOT NULL,
    -- The outbox event (or request) that fired the rule: a redelivery starts no second run.
    trigger_event_id TEXT NOT NULL,
    event            TEXT NOT NULL,
    -- Position of the next instruction of the compiled program.
    cursor           INTEGER NOT NULL DEFAULT 0,
    -- Bumped by every retry through the API, so the retried step gets fresh job keys.
    retries          INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    started_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT
);
CREATE UNIQUE INDEX automation_runs_trigger ON automation_runs(automation_id, trigger_event_id);
CREATE INDEX automation_runs_list ON automation_runs(workspace_id, automation_id, id);

-- One row per instruction executed: the primary key is what makes a step run at most once.
CREATE TABLE automation_run_steps (
    run_id       BLOB NOT NULL REFERENCES automation_runs(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    workspace_id BLOB NOT NULL,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('succeeded', 'failed', 'waiting', 'queued')),
    input        TEXT NOT NULL,
    output       TEXT,
    error        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 1,
    resume_at    TEXT,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    PRIMARY KEY (run_id, position)
);

-- The platform cron schedules of a rule's schedule triggers (recreated on every change).
CREATE TABLE automation_schedules (
    schedule_id   BLOB PRIMARY KEY,
    workspace_id  BLOB NOT NULL,
    automation_id BLOB NOT NULL REFERENCES automations(id) ON DELETE CASCADE
);
CREATE INDEX automation_schedules_rule ON automation_schedules(automation_id);
