-- Loop protection: how many runs led to the event that started this run (see design.md).
ALTER TABLE automation_runs ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;

-- The inactivity timer of a rule for one contact. Every `after` event that is newer than
-- `since` bumps `generation` and re-arms `due_at`; an `unless` event bumps it and disarms. The
-- delayed job of a timer carries its generation, so a superseded job finds another one here and
-- does nothing.
CREATE TABLE automation_timers (
    automation_id BLOB NOT NULL REFERENCES automations(id) ON DELETE CASCADE,
    contact_id    BLOB NOT NULL,
    workspace_id  BLOB NOT NULL,
    generation    INTEGER NOT NULL,
    -- When the timer fires; NULL when cancelled or fired.
    due_at        TEXT,
    -- The time and id of the latest event that started or cancelled the timer.
    since         TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    -- The causation depth of that event, for the run the timer starts.
    depth         INTEGER NOT NULL DEFAULT 0,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (automation_id, contact_id)
);
