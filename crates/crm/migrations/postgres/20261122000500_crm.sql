-- CRM: contacts and their identifiers, tags, merges, custom field definitions, companies,
-- pipelines, stages, deals and their history, notes, tasks and the per-contact timeline.
-- Every table carries workspace_id; every query filters on it.

CREATE TABLE crm_settings (
    workspace_id   UUID PRIMARY KEY REFERENCES workspaces(id) ON DELETE CASCADE,
    -- ISO 3166-1 alpha-2 region used to read phone numbers written without a country code.
    default_region TEXT NOT NULL DEFAULT 'US',
    updated_at     TIMESTAMPTZ NOT NULL
);

CREATE TABLE custom_fields (
    id           UUID PRIMARY KEY,
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    entity       TEXT NOT NULL CHECK (entity IN ('contact', 'company', 'deal')),
    key          TEXT NOT NULL,
    label        TEXT NOT NULL,
    field_type   TEXT NOT NULL,
    options      TEXT NOT NULL DEFAULT '[]',
    required     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (workspace_id, entity, key)
);

CREATE TABLE companies (
    id           UUID PRIMARY KEY,
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    domain       TEXT,
    custom       TEXT NOT NULL DEFAULT '{}',
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX companies_workspace ON companies(workspace_id, id);
CREATE UNIQUE INDEX companies_domain ON companies(workspace_id, domain) WHERE domain IS NOT NULL;

CREATE TABLE contacts (
    id              UUID PRIMARY KEY,
    workspace_id    UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    first_name      TEXT,
    last_name       TEXT,
    company_id      UUID REFERENCES companies(id) ON DELETE SET NULL,
    owner_id        UUID REFERENCES users(id) ON DELETE SET NULL,
    lifecycle_stage TEXT NOT NULL DEFAULT 'lead',
    lead_score      BIGINT NOT NULL DEFAULT 0,
    first_touch     TEXT,
    last_touch      TEXT,
    custom          TEXT NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    last_seen_at    TIMESTAMPTZ
);
CREATE INDEX contacts_workspace ON contacts(workspace_id, id);
CREATE INDEX contacts_company ON contacts(company_id);

-- Every identifier a contact is known by: `email`, `phone` (E.164), `external_id`,
-- `ga_client_id`, `anonymous_id`. An identifier belongs to one contact of a workspace.
CREATE TABLE contact_identities (
    workspace_id UUID NOT NULL,
    kind         TEXT NOT NULL,
    value        TEXT NOT NULL,
    contact_id   UUID NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workspace_id, kind, value)
);
CREATE INDEX contact_identities_contact ON contact_identities(contact_id, kind, position);

CREATE TABLE contact_tags (
    workspace_id UUID NOT NULL,
    contact_id   UUID NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    tag          TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (contact_id, tag)
);
CREATE INDEX contact_tags_tag ON contact_tags(workspace_id, tag);

-- A merged contact's id keeps resolving to the survivor (chains are collapsed on merge).
CREATE TABLE contact_merges (
    merged_id    UUID PRIMARY KEY,
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    survivor_id  UUID NOT NULL,
    snapshot     TEXT NOT NULL,
    actor        TEXT,
    merged_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX contact_merges_survivor ON contact_merges(survivor_id);

CREATE TABLE pipelines (
    id           UUID PRIMARY KEY,
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX pipelines_workspace ON pipelines(workspace_id, id);

CREATE TABLE pipeline_stages (
    id           UUID PRIMARY KEY,
    workspace_id UUID NOT NULL,
    pipeline_id  UUID NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    position     INTEGER NOT NULL,
    -- Win probability in percent, 0–100.
    probability  INTEGER NOT NULL DEFAULT 0,
    kind         TEXT NOT NULL DEFAULT 'open' CHECK (kind IN ('open', 'won', 'lost'))
);
CREATE INDEX pipeline_stages_pipeline ON pipeline_stages(pipeline_id, position);

CREATE TABLE deals (
    id                  UUID PRIMARY KEY,
    workspace_id        UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    pipeline_id         UUID NOT NULL REFERENCES pipelines(id),
    stage_id            UUID NOT NULL REFERENCES pipeline_stages(id),
    title               TEXT NOT NULL,
    -- Amount in the currency's minor unit (cents), exact.
    value_minor         BIGINT NOT NULL DEFAULT 0,
    currency            TEXT NOT NULL DEFAULT 'USD',
    company_id          UUID REFERENCES companies(id) ON DELETE SET NULL,
    owner_id            UUID REFERENCES users(id) ON DELETE SET NULL,
    status              TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'won', 'lost')),
    lost_reason         TEXT,
    expected_close_date TEXT,
    custom              TEXT NOT NULL DEFAULT '{}',
    stage_entered_at    TIMESTAMPTZ NOT NULL,
    closed_at           TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX deals_workspace ON deals(workspace_id, id);
CREATE INDEX deals_stage ON deals(workspace_id, pipeline_id, stage_id);

CREATE TABLE deal_contacts (
    deal_id      UUID NOT NULL REFERENCES deals(id) ON DELETE CASCADE,
    contact_id   UUID NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    workspace_id UUID NOT NULL,
    PRIMARY KEY (deal_id, contact_id)
);
CREATE INDEX deal_contacts_contact ON deal_contacts(contact_id);

-- One row per stay of a deal in a stage; `left_at` is NULL for the current one.
CREATE TABLE deal_stage_history (
    id           UUID PRIMARY KEY,
    workspace_id UUID NOT NULL,
    deal_id      UUID NOT NULL REFERENCES deals(id) ON DELETE CASCADE,
    stage_id     UUID NOT NULL,
    entered_at   TIMESTAMPTZ NOT NULL,
    left_at      TIMESTAMPTZ,
    actor        TEXT
);
CREATE INDEX deal_stage_history_deal ON deal_stage_history(deal_id, entered_at);

CREATE TABLE notes (
    id           UUID PRIMARY KEY,
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    contact_id   UUID REFERENCES contacts(id) ON DELETE CASCADE,
    deal_id      UUID REFERENCES deals(id) ON DELETE CASCADE,
    body         TEXT NOT NULL,
    author       TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX notes_workspace ON notes(workspace_id, id);
CREATE INDEX notes_contact ON notes(contact_id);

CREATE TABLE tasks (
    id           UUID PRIMARY KEY,
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    contact_id   UUID REFERENCES contacts(id) ON DELETE CASCADE,
    deal_id      UUID REFERENCES deals(id) ON DELETE CASCADE,
    title        TEXT NOT NULL,
    due_at       TIMESTAMPTZ,
    assignee_id  UUID REFERENCES users(id) ON DELETE SET NULL,
    done_at      TIMESTAMPTZ,
    author       TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX tasks_workspace ON tasks(workspace_id, id);
CREATE INDEX tasks_contact ON tasks(contact_id);
CREATE INDEX tasks_due ON tasks(due_at) WHERE done_at IS NULL;

-- The per-contact feed. `dedupe_key` makes at-least-once writers (capture, imports) idempotent.
CREATE TABLE timeline_entries (
    id           UUID PRIMARY KEY,
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    contact_id   UUID NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    actor        TEXT,
    data         TEXT NOT NULL DEFAULT '{}',
    dedupe_key   TEXT
);
CREATE INDEX timeline_contact ON timeline_entries(contact_id, occurred_at, id);
CREATE UNIQUE INDEX timeline_dedupe ON timeline_entries(workspace_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
