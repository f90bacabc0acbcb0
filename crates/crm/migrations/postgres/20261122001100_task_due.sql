-- When `task.due` was published for a task's current due time (cleared when it changes).
ALTER TABLE tasks ADD COLUMN due_notified_at TIMESTAMPTZ;
