-- How many automation runs led to an event: 0 for a change made by a person or an API client,
-- d + 1 for an event raised by a run at depth d (see `platform::outbox::with_causation_depth`).
ALTER TABLE outbox_events ADD COLUMN causation_depth INTEGER NOT NULL DEFAULT 0;
