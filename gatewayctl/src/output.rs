//! How read commands print: a table (default), JSON or YAML.

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// The `-o/--output` flag every read command takes.
#[derive(Debug, clap::Args)]
pub struct FormatArgs {
    /// How to print: table, json or yaml.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// A table column: its header and the JSON pointer of its value in each row.
pub type Column = (&'static str, &'static str);

/// Print `value`: as JSON or YAML whole, or as a table of `rows` with `columns`.
pub fn print(output: Output, value: &Value, rows: &[Value], columns: &[Column]) {
    match output {
        Output::Json => emit(&serde_json::to_string_pretty(value).unwrap_or_default()),
        Output::Yaml => emit(crate::plan::yaml(value).trim_end()),
        Output::Table => emit(&table(rows, columns)),
    }
}

pub fn table(rows: &[Value], columns: &[Column]) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    table.set_header(columns.iter().map(|(header, _)| *header));
    for row in rows {
        table.add_row(columns.iter().map(|(_, pointer)| cell(row.pointer(pointer))));
    }
    table.to_string().lines().map(|l| l.strip_prefix(" ").unwrap_or(l).trim_end()).collect::<Vec<_>>().join("\n")
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items.iter().map(|v| cell(Some(v))).collect::<Vec<_>>().join(","),
        Some(other) => other.to_string(),
    }
}

/// Write a line to stdout (the one place the CLI prints its results).
#[allow(clippy::print_stdout)]
pub fn emit(text: &str) {
    println!("{text}");
}
