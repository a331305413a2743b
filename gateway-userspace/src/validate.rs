//! `gateway validate`: translate YAML files offline and print every object with the status it would get.
use crate::provider::file;
use crate::snapshot::Snapshot;
use crate::status::{objects_with_status, Timestamp};
use crate::translate::{translate, TranslateOptions, DEFAULT_CONTROLLER_NAME};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `gateway validate`.
#[derive(Clone, Debug, clap::Args)]
pub struct ValidateArgs {
    /// YAML files or directories (walked recursively for *.yaml and *.yml).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output format: multi-document YAML or a JSON Kubernetes List.
    #[arg(short, long, value_enum, default_value = "yaml")]
    pub output: OutputFormat,
    /// GatewayClasses with this spec.controllerName are handled.
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    pub controller_name: String,
}

/// How `validate` prints the objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
}

/// Runs `gateway validate`: prints the objects with their status on stdout and exits 0; when the input cannot be
/// parsed prints `file:line: message` on stderr and exits 1.
pub fn run(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let snapshot = match file::load(&args.paths) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let options = TranslateOptions {
        controller_name: args.controller_name.clone(),
        now: Timestamp::now(),
        ..Default::default()
    };
    print!("{}", render(&snapshot, &options, args.output)?);
    Ok(ExitCode::SUCCESS)
}

/// The text `validate` prints for a snapshot: YAML documents (`---` separated) or a pretty JSON `List`.
pub fn render(
    snapshot: &Snapshot,
    options: &TranslateOptions,
    format: OutputFormat,
) -> anyhow::Result<String> {
    let (_, status) = translate(snapshot, options);
    let list = objects_with_status(snapshot, &status);
    Ok(match format {
        OutputFormat::Json => serde_json::to_string_pretty(&list)? + "\n",
        OutputFormat::Yaml => {
            let mut out = String::new();
            for item in list["items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                out.push_str("---\n");
                out.push_str(&serde_yaml::to_string(item)?);
            }
            out
        }
    })
}
