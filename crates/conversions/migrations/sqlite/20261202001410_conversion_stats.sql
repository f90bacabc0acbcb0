-- Stats per day read conversions and attempts of a workspace by time.
CREATE INDEX conversion_events_created ON conversion_events(workspace_id, created_at);
CREATE INDEX conversion_attempts_created ON conversion_attempts(workspace_id, created_at);
