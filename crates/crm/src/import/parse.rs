//! The CSV side of imports: checking an uploaded file, suggesting a mapping from its header, and
//! turning one row into a [`ContactInput`] under a mapping. No database here.

use std::collections::{BTreeMap, HashMap};

use platform::{ApiError, ApiResult};
use serde_json::{Map, Number, Value, json};

use crate::contacts::{ContactInput, LifecycleStage};
use crate::fields::{FieldDefinition, FieldType};
use crate::normalize;

/// Most data rows in one file.
pub const MAX_ROWS: u64 = 1_000_000;
/// Most columns in one file.
pub const MAX_COLUMNS: usize = 200;
/// Rows shown after an upload.
pub const SAMPLE_ROWS: usize = 5;

/// An uploaded file that passed the checks.
#[derive(Debug)]
pub struct Upload {
    /// The text, without a byte order mark.
    pub text: String,
    pub separator: u8,
    pub columns: Vec<String>,
    /// Data rows (rows whose cells are all blank are skipped and not counted).
    pub total_rows: u64,
    pub sample: Vec<Vec<String>>,
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::unprocessable(code, message.into())
}

/// The separator of the header line: the most frequent of `,`, `;` and tab (`,` on a tie).
fn sniff_separator(text: &str) -> u8 {
    let first = text.lines().next().unwrap_or_default();
    let mut best = (b',', first.matches(',').count());
    for sep in [b';', b'\t'] {
        let n = first.bytes().filter(|b| *b == sep).count();
        if n > best.1 {
            best = (sep, n);
        }
    }
    best.0
}

/// A header cell that is surely data: the file has no header row.
fn looks_like_data(cell: &str) -> bool {
    let digits = cell.chars().filter(char::is_ascii_digit).count();
    let phoneish = cell
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c));
    (cell.contains('@') && cell.contains('.') && !cell.contains(' ')) || (phoneish && digits >= 7)
}

/// `'=1+2` → `=1+2`: undoes the guard [`guard_formula`] puts on exported cells.
pub fn unguard(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r']) => rest,
        _ => cell,
    }
}

/// Spreadsheets run a cell that starts with `=`, `+`, `-` or `@` as a formula; a leading `'`
/// makes it text (OWASP "CSV injection").
pub fn guard_formula(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_owned()
    }
}

fn reader(text: &str, separator: u8) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .delimiter(separator)
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes())
}

/// The data rows of a checked file, with their numbers: the line the row starts on, so the
/// header is row 1 and, unless a cell spans lines, the number is the row a spreadsheet shows.
/// Rows whose cells are all blank are skipped.
pub fn rows(
    text: &str,
    separator: u8,
) -> impl Iterator<Item = Result<(u64, csv::StringRecord), csv::Error>> + '_ {
    reader(text, separator)
        .into_records()
        .filter_map(|record| match record {
            Ok(r) if r.iter().all(|c| c.trim().is_empty()) => None,
            Ok(r) => Some(Ok((r.position().map_or(0, csv::Position::line), r))),
            Err(e) => Some(Err(e)),
        })
}

/// Checks an uploaded file: UTF-8 text with a header row of distinct names and at least one data
/// row, every row as wide as the header. Each problem is a 422 with its own code.
pub fn check_upload(bytes: &[u8]) -> ApiResult<Upload> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        bad(
            "csv_not_utf8",
            format!(
                "The file is not UTF-8 text (invalid byte at offset {}); export it as \"CSV UTF-8\".",
                e.valid_up_to()
            ),
        )
    })?;
    if text.trim().is_empty() {
        return Err(bad("csv_empty", "The file is empty."));
    }
    if text.contains('\0') {
        return Err(bad(
            "csv_invalid",
            "The file contains NUL characters; it is not a CSV text file.",
        ));
    }
    let separator = sniff_separator(text);
    let mut rdr = reader(text, separator);
    let header = rdr
        .headers()
        .map_err(|e| bad("csv_invalid", format!("The header row cannot be read: {e}")))?
        .clone();
    if header.len() > MAX_COLUMNS {
        return Err(bad(
            "csv_too_many_columns",
            format!(
                "The file has {} columns; at most {MAX_COLUMNS}.",
                header.len()
            ),
        ));
    }
    let mut columns: Vec<String> = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        let name = name.trim();
        if looks_like_data(name) {
            return Err(bad(
                "csv_no_header",
                format!(
                    "The first row must name the columns (Email, Phone, First name…); `{name}` looks like data."
                ),
            ));
        }
        if name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(bad(
                "csv_invalid_header",
                format!(
                    "Column {} has a name longer than 200 characters or with line breaks.",
                    i + 1
                ),
            ));
        }
        let name = if name.is_empty() {
            format!("Column {}", i + 1)
        } else {
            name.to_owned()
        };
        if columns.contains(&name) {
            return Err(bad(
                "csv_duplicate_column",
                format!(
                    "Two columns are named `{name}`; rename one so the mapping can tell them apart."
                ),
            )
            .with_details(json!({ "column": name })));
        }
        columns.push(name);
    }
    let mut total_rows = 0u64;
    let mut sample = Vec::with_capacity(SAMPLE_ROWS);
    for row in rows(text, separator) {
        let (_, record) = row.map_err(|e| csv_error(&e, columns.len()))?;
        total_rows += 1;
        if total_rows > MAX_ROWS {
            return Err(bad(
                "csv_too_many_rows",
                format!("The file has more than {MAX_ROWS} rows; split it."),
            ));
        }
        if sample.len() < SAMPLE_ROWS {
            sample.push(record.iter().map(|c| unguard(c).to_owned()).collect());
        }
    }
    if total_rows == 0 {
        return Err(bad(
            "csv_no_rows",
            "The file has a header but no data rows.",
        ));
    }
    Ok(Upload {
        text: text.to_owned(),
        separator,
        columns,
        total_rows,
        sample,
    })
}

/// A parse error of a data row, as the client sees it.
fn csv_error(err: &csv::Error, width: usize) -> ApiError {
    let row = err.position().map(csv::Position::line);
    match err.kind() {
        csv::ErrorKind::UnequalLengths { len, .. } => bad(
            "csv_ragged_row",
            format!(
                "Row {} has {len} cells but the header has {width}; every row must have one cell per column.",
                row.unwrap_or_default()
            ),
        )
        .with_details(json!({ "row": row, "expected": width, "found": len })),
        _ => bad("csv_invalid", format!("The file cannot be read as CSV: {err}"))
            .with_details(json!({ "row": row })),
    }
}

/// Where a column's cells go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Emails,
    Phones,
    FirstName,
    LastName,
    Tags,
    ExternalIds,
    LifecycleStage,
    LeadScore,
    /// A contact custom field, by key.
    Custom(String),
    Ignore,
}

impl Target {
    pub fn parse(text: &str) -> Option<Target> {
        Some(match text {
            "emails" => Target::Emails,
            "phones" => Target::Phones,
            "first_name" => Target::FirstName,
            "last_name" => Target::LastName,
            "tags" => Target::Tags,
            "external_ids" => Target::ExternalIds,
            "lifecycle_stage" => Target::LifecycleStage,
            "lead_score" => Target::LeadScore,
            "ignore" => Target::Ignore,
            _ => {
                let key = text.strip_prefix("custom.")?;
                if key.is_empty() {
                    return None;
                }
                Target::Custom(key.to_owned())
            }
        })
    }

    /// The name in mappings, which is also the field `ContactInput` errors name.
    pub fn name(&self) -> String {
        match self {
            Target::Emails => "emails".into(),
            Target::Phones => "phones".into(),
            Target::FirstName => "first_name".into(),
            Target::LastName => "last_name".into(),
            Target::Tags => "tags".into(),
            Target::ExternalIds => "external_ids".into(),
            Target::LifecycleStage => "lifecycle_stage".into(),
            Target::LeadScore => "lead_score".into(),
            Target::Custom(key) => format!("custom.{key}"),
            Target::Ignore => "ignore".into(),
        }
    }

    /// Several columns may feed a list (two email columns); a single value takes one column.
    pub fn takes_many(&self) -> bool {
        matches!(
            self,
            Target::Emails | Target::Phones | Target::Tags | Target::ExternalIds | Target::Ignore
        )
    }

    pub fn is_identifier(&self) -> bool {
        matches!(self, Target::Emails | Target::Phones | Target::ExternalIds)
    }
}

/// `E-mail Address` → `e_mail_address`.
pub fn snake_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.trim().chars() {
        if ch.is_alphanumeric() {
            out.extend(ch.to_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

/// The target a header name suggests. `custom_keys` are the contact custom fields.
fn suggest(column: &str, custom_keys: &[String]) -> Target {
    let snake = snake_case(column);
    let bare = snake.replace('_', "");
    match bare.as_str() {
        "email" | "emails" | "emailaddress" | "emailaddresses" | "mail" | "workemail"
        | "personalemail" => return Target::Emails,
        "phone" | "phones" | "phonenumber" | "phonenumbers" | "mobile" | "mobilephone"
        | "mobilenumber" | "cell" | "cellphone" | "telephone" | "tel" | "whatsapp"
        | "whatsappnumber" | "workphone" | "homephone" => return Target::Phones,
        "firstname" | "givenname" | "forename" => return Target::FirstName,
        "lastname" | "surname" | "familyname" => return Target::LastName,
        "tags" | "tag" | "labels" | "label" => return Target::Tags,
        "externalid" | "externalids" => return Target::ExternalIds,
        "lifecycle" | "lifecyclestage" | "stage" => return Target::LifecycleStage,
        "leadscore" | "score" => return Target::LeadScore,
        _ => {}
    }
    let key = snake.strip_prefix("custom_").unwrap_or(&snake);
    if custom_keys.iter().any(|k| k == key) {
        return Target::Custom(key.to_owned());
    }
    Target::Ignore
}

/// A mapping for every column from its header; a single-value target goes to its first column
/// only, the others are ignored.
pub fn suggest_mapping(columns: &[String], custom_keys: &[String]) -> BTreeMap<String, String> {
    let mut taken: Vec<Target> = Vec::new();
    let mut out = BTreeMap::new();
    for column in columns {
        let mut target = suggest(column, custom_keys);
        if !target.takes_many() && taken.contains(&target) {
            target = Target::Ignore;
        }
        taken.push(target.clone());
        out.insert(column.clone(), target.name());
    }
    out
}

/// A row that cannot be imported: the column at fault (when known) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub column: Option<String>,
    pub message: String,
}

/// What the job needs to turn rows into contact inputs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// (cell index, column name, target), ignored columns left out.
    pub columns: Vec<(usize, String, Target)>,
    /// Tags added to every row.
    pub tags: Vec<String>,
    /// The workspace's phone region.
    pub region: String,
    /// Contact custom fields by key.
    pub fields: HashMap<String, FieldDefinition>,
}

fn split_list(cell: &str) -> impl Iterator<Item = &str> {
    cell.split([',', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `MQL`, `Marketing qualified lead`, `marketing-qualified-lead` → the stage.
pub fn lifecycle(cell: &str) -> Option<LifecycleStage> {
    let snake = snake_case(cell);
    match snake.as_str() {
        "mql" => Some(LifecycleStage::MarketingQualifiedLead),
        "sql" => Some(LifecycleStage::SalesQualifiedLead),
        _ => LifecycleStage::parse(&snake),
    }
}

impl Plan {
    /// The contact input of one row: empty cells are left out, lists split on `,` and `;`, and
    /// identifiers checked here so the error names the column.
    pub fn input(&self, record: &csv::StringRecord) -> Result<ContactInput, RowError> {
        let mut input = ContactInput::default();
        let mut custom = Map::new();
        let mut tags: Vec<String> = self.tags.clone();
        for (index, column, target) in &self.columns {
            let cell = unguard(record.get(*index).unwrap_or_default().trim());
            if cell.is_empty() {
                continue;
            }
            let fail = |message: String| RowError {
                column: Some(column.clone()),
                message,
            };
            let field = target.name();
            match target {
                Target::Emails => {
                    for value in split_list(cell) {
                        let email =
                            normalize::email(&field, value).map_err(|e| fail(e.message.into()))?;
                        input.emails.get_or_insert_with(Vec::new).push(email);
                    }
                }
                Target::Phones => {
                    for value in split_list(cell) {
                        let phone = normalize::phone(&field, value, &self.region)
                            .map_err(|e| fail(e.message.into()))?;
                        input.phones.get_or_insert_with(Vec::new).push(phone);
                    }
                }
                Target::ExternalIds => {
                    let id =
                        normalize::identifier(&field, cell).map_err(|e| fail(e.message.into()))?;
                    input.external_ids.get_or_insert_with(Vec::new).push(id);
                }
                Target::Tags => {
                    for value in split_list(cell) {
                        let tag =
                            normalize::tag(&field, value).map_err(|e| fail(e.message.into()))?;
                        if !tags.contains(&tag) {
                            tags.push(tag);
                        }
                    }
                }
                Target::FirstName => input.first_name = Some(Some(cell.to_owned())),
                Target::LastName => input.last_name = Some(Some(cell.to_owned())),
                Target::LifecycleStage => {
                    input.lifecycle_stage = Some(lifecycle(cell).ok_or_else(|| {
                        fail(format!(
                            "`{cell}` is not a lifecycle stage (subscriber, lead, marketing_qualified_lead, \
                             sales_qualified_lead, opportunity, customer, evangelist, other)."
                        ))
                    })?);
                }
                Target::LeadScore => {
                    input.lead_score = Some(
                        cell.parse::<i64>()
                            .map_err(|_| fail(format!("`{cell}` is not a whole number.")))?,
                    );
                }
                Target::Custom(key) => {
                    let value = match self.fields.get(key) {
                        Some(def) => custom_value(def, cell).map_err(fail)?,
                        // Deleted since the import started: the upsert names it.
                        None => Value::String(cell.to_owned()),
                    };
                    custom.insert(key.clone(), value);
                }
                Target::Ignore => {}
            }
        }
        let has_identifier = [&input.emails, &input.phones, &input.external_ids]
            .iter()
            .any(|list| list.as_ref().is_some_and(|l| !l.is_empty()));
        if !has_identifier {
            return Err(RowError {
                column: None,
                message: "The row has no email, phone or external id.".to_owned(),
            });
        }
        if !tags.is_empty() {
            input.tags = Some(tags);
        }
        if !custom.is_empty() {
            input.custom = Some(custom);
        }
        Ok(input)
    }

    /// The column a field named in an error came from (`emails`, `custom.plan`…).
    pub fn column_of(&self, field: &str) -> Option<String> {
        self.columns
            .iter()
            .find(|(_, _, target)| target.name() == field)
            .map(|(_, column, _)| column.clone())
    }
}

/// A cell as the JSON value a custom field of `def`'s type takes; [`crate::fields::apply`]
/// validates it further.
fn custom_value(def: &FieldDefinition, cell: &str) -> Result<Value, String> {
    Ok(match def.field_type {
        FieldType::Number => {
            let number = cell
                .parse::<i64>()
                .ok()
                .map(Number::from)
                .or_else(|| cell.parse::<f64>().ok().and_then(Number::from_f64));
            Value::Number(number.ok_or_else(|| format!("`{cell}` is not a number."))?)
        }
        FieldType::Boolean => match cell.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "1" => Value::Bool(true),
            "false" | "no" | "n" | "0" => Value::Bool(false),
            _ => return Err(format!("`{cell}` is not true or false.")),
        },
        FieldType::MultiSelect => Value::Array(
            split_list(cell)
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        FieldType::Money => {
            // `1250.50 EUR` or `EUR 1250.50`.
            let parts: Vec<&str> = cell.split_whitespace().collect();
            let (amount, currency) = match parts.as_slice() {
                [a, c] if c.chars().all(|ch| ch.is_ascii_alphabetic()) => (*a, *c),
                [c, a] if c.chars().all(|ch| ch.is_ascii_alphabetic()) => (*a, *c),
                _ => return Err(format!("`{cell}` is not an amount like `1250.50 EUR`.")),
            };
            json!({ "amount": amount, "currency": currency })
        }
        _ => Value::String(cell.to_owned()),
    })
}

/// A custom value as one CSV cell (the inverse of [`custom_value`]).
pub fn custom_cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(custom_cell).collect::<Vec<_>>().join(";"),
        Value::Object(o) => match (o.get("amount"), o.get("currency")) {
            (Some(amount), Some(currency)) => {
                format!("{} {}", custom_cell(amount), custom_cell(currency))
            }
            _ => value.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(bytes: &[u8]) -> String {
        check_upload(bytes).unwrap_err().code.to_string()
    }

    #[test]
    fn uploads_are_checked() {
        assert_eq!(codes(b""), "csv_empty");
        assert_eq!(codes(b"  \n\n"), "csv_empty");
        assert_eq!(codes(b"Email\n"), "csv_no_rows");
        assert_eq!(
            codes(b"ana@example.com,Ana\nbo@example.com,Bo\n"),
            "csv_no_header"
        );
        assert_eq!(codes(b"+1 415 555 2671,Ana\n"), "csv_no_header");
        assert_eq!(
            codes(b"Email,Email\na@x.io,b@x.io\n"),
            "csv_duplicate_column"
        );
        assert_eq!(codes(b"Email,Name\na@x.io,A\nb@x.io\n"), "csv_ragged_row");
        assert_eq!(codes(b"Email\n\xff\xfe\n"), "csv_not_utf8");
        assert_eq!(codes(b"Email\na\0@x.io\n"), "csv_invalid");
        let err = check_upload(b"Email,Name\na@x.io,A\nb@x.io,B,extra\n").unwrap_err();
        assert_eq!(err.details.unwrap()["row"], 3);
    }

    #[test]
    fn a_good_upload_has_columns_sample_and_count() {
        let text = "\u{feff}E-mail;First name;;Plan\n\
                    a@x.io;Ana;;'=pro\n\n;;;\nb@x.io;\"Bo; Jr\";;free\n";
        let up = check_upload(text.as_bytes()).unwrap();
        assert_eq!(up.separator, b';');
        assert_eq!(up.columns, ["E-mail", "First name", "Column 3", "Plan"]);
        assert_eq!(up.total_rows, 2, "blank rows are not counted");
        assert_eq!(up.sample[0], ["a@x.io", "Ana", "", "=pro"]);
        assert_eq!(up.sample[1][1], "Bo; Jr");
        let numbers: Vec<u64> = rows(&up.text, up.separator).map(|r| r.unwrap().0).collect();
        assert_eq!(
            numbers,
            [2, 5],
            "spreadsheet row numbers, blank rows skipped"
        );
    }

    #[test]
    fn mapping_suggestions() {
        let columns: Vec<String> = [
            "Email",
            "E-mail",
            "Email address",
            "Phone",
            "Mobile",
            "WhatsApp",
            "First name",
            "Last Name",
            "Tags",
            "External id",
            "Lifecycle",
            "Plan Tier",
            "Favourite colour",
            "first_name",
        ]
        .map(String::from)
        .to_vec();
        let m = suggest_mapping(&columns, &["plan_tier".to_owned()]);
        let t = |c: &str| m[c].as_str();
        assert_eq!(t("Email"), "emails");
        assert_eq!(t("E-mail"), "emails");
        assert_eq!(t("Email address"), "emails");
        assert_eq!(t("Phone"), "phones");
        assert_eq!(t("Mobile"), "phones");
        assert_eq!(t("WhatsApp"), "phones");
        assert_eq!(t("First name"), "first_name");
        assert_eq!(
            t("first_name"),
            "ignore",
            "first_name is taken by `First name`"
        );
        assert_eq!(t("Last Name"), "last_name");
        assert_eq!(t("Tags"), "tags");
        assert_eq!(t("External id"), "external_ids");
        assert_eq!(t("Lifecycle"), "lifecycle_stage");
        assert_eq!(t("Plan Tier"), "custom.plan_tier");
        assert_eq!(t("Favourite colour"), "ignore");
        // The export's own header maps back.
        let exported = ["id", "emails", "lead_score", "custom.plan_tier"].map(String::from);
        let m = suggest_mapping(&exported, &["plan_tier".to_owned()]);
        assert_eq!(m["id"], "ignore");
        assert_eq!(m["emails"], "emails");
        assert_eq!(m["lead_score"], "lead_score");
        assert_eq!(m["custom.plan_tier"], "custom.plan_tier");
    }

    #[test]
    fn targets_round_trip() {
        for name in [
            "emails",
            "phones",
            "first_name",
            "last_name",
            "tags",
            "external_ids",
            "lifecycle_stage",
            "lead_score",
            "custom.plan",
            "ignore",
        ] {
            assert_eq!(Target::parse(name).unwrap().name(), name);
        }
        assert!(Target::parse("email").is_none());
        assert!(Target::parse("custom.").is_none());
    }

    fn plan(columns: &[(&str, Target)]) -> Plan {
        Plan {
            columns: columns
                .iter()
                .enumerate()
                .map(|(i, (c, t))| (i, (*c).to_owned(), t.clone()))
                .collect(),
            tags: vec!["imported".to_owned()],
            region: "US".to_owned(),
            fields: HashMap::new(),
        }
    }

    #[test]
    fn rows_become_inputs() {
        let p = plan(&[
            ("Email", Target::Emails),
            ("Phone", Target::Phones),
            ("Tags", Target::Tags),
            ("Stage", Target::LifecycleStage),
            ("Score", Target::LeadScore),
            ("First", Target::FirstName),
        ]);
        let row = csv::StringRecord::from(vec![
            " Ana@X.io; ana2@x.io ",
            "(415) 555-2671",
            "vip, beta;vip",
            "MQL",
            "12",
            "Ana",
        ]);
        let input = p.input(&row).unwrap();
        assert_eq!(input.emails.unwrap(), ["ana@x.io", "ana2@x.io"]);
        assert_eq!(input.phones.unwrap(), ["+14155552671"]);
        assert_eq!(input.tags.unwrap(), ["imported", "vip", "beta"]);
        assert_eq!(
            input.lifecycle_stage,
            Some(LifecycleStage::MarketingQualifiedLead)
        );
        assert_eq!(input.lead_score, Some(12));
        assert_eq!(input.first_name, Some(Some("Ana".to_owned())));

        let err = |cells: Vec<&str>| p.input(&csv::StringRecord::from(cells)).unwrap_err();
        let e = err(vec!["not-an-email", "", "", "", "", ""]);
        assert_eq!(e.column.as_deref(), Some("Email"));
        let e = err(vec!["a@x.io", "12", "", "", "", ""]);
        assert_eq!(e.column.as_deref(), Some("Phone"));
        let e = err(vec!["a@x.io", "", "", "chief", "", ""]);
        assert_eq!(e.column.as_deref(), Some("Stage"));
        let e = err(vec!["a@x.io", "", "", "", "1.5", ""]);
        assert_eq!(e.column.as_deref(), Some("Score"));
        let e = err(vec!["", "", "vip", "", "", "Ana"]);
        assert_eq!(e.column, None, "no identifier");
        assert_eq!(p.column_of("first_name").as_deref(), Some("First"));
        assert_eq!(p.column_of("touch.source"), None);
    }

    #[test]
    fn formula_guard_round_trips() {
        for cell in ["=SUM(A1)", "+1", "-3", "@x", "plain", "'quoted"] {
            assert_eq!(unguard(&guard_formula(cell)), cell);
        }
        assert_eq!(guard_formula("=1"), "'=1");
    }

    #[test]
    fn custom_cells_round_trip() {
        let def = |field_type| FieldDefinition {
            id: crate::FieldId::new(),
            entity: crate::fields::Entity::Contact,
            key: "k".into(),
            label: "K".into(),
            field_type,
            options: vec![],
            required: false,
            created_at: platform::Timestamp::now(),
            updated_at: platform::Timestamp::now(),
        };
        let cases = [
            (FieldType::Number, "42", json!(42)),
            (FieldType::Number, "2.5", json!(2.5)),
            (FieldType::Boolean, "Yes", json!(true)),
            (FieldType::MultiSelect, "a; b", json!(["a", "b"])),
            (
                FieldType::Money,
                "1250.50 EUR",
                json!({"amount": "1250.50", "currency": "EUR"}),
            ),
            (FieldType::Text, "hello", json!("hello")),
        ];
        for (t, cell, want) in cases {
            let got = custom_value(&def(t), cell).unwrap();
            assert_eq!(got, want);
            let again = custom_value(&def(t), &custom_cell(&got)).unwrap();
            assert_eq!(again, want);
        }
        assert!(custom_value(&def(FieldType::Number), "many").is_err());
        assert!(custom_value(&def(FieldType::Boolean), "maybe").is_err());
    }
}
