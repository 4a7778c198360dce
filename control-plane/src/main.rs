//! `outrider`: the control plane and its CLI. This first version has the
//! offline verb `validate`; the server and the verbs that talk to it
//! (`control-plane`, `apply`, `get`, `delete`, `status`, `token`, `inject`,
//! `demo`) arrive with the control plane.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "outrider",
    version,
    about = "Outrider service mesh: control plane and CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check policy files offline (no server needed): every document of a file,
    /// or of every *.yaml / *.yml file of a directory, validated as one set.
    Validate {
        /// A policy file or a directory of them.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Output: table (human) or json.
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file, output } => validate(&file, output),
    }
}

fn validate(path: &std::path::Path, output: Output) -> ExitCode {
    let result = if path.is_dir() {
        outrider_xds::load_dir(path)
    } else {
        outrider_xds::load_file(path)
    };
    match (result, output) {
        (Ok(set), Output::Table) => {
            let resources = outrider_xds::translate(&set);
            println!(
                "{}: valid ({} services, {} traffic policies; version {})",
                path.display(),
                set.services.len(),
                set.traffic_policies.len(),
                resources.version
            );
            ExitCode::SUCCESS
        }
        (Ok(set), Output::Json) => {
            let resources = outrider_xds::translate(&set);
            let v = serde_json::json!({
                "valid": true,
                "version": resources.version,
                "services": set.services.keys().collect::<Vec<_>>(),
                "trafficPolicies": set.traffic_policies.keys().collect::<Vec<_>>(),
            });
            println!("{v}");
            ExitCode::SUCCESS
        }
        (Err(errors), Output::Table) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
        (Err(errors), Output::Json) => {
            let list: Vec<_> = errors
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "file": e.file, "document": e.document.map(|d| d + 1), "kind": e.kind,
                        "name": e.name, "field": e.field, "message": e.message,
                    })
                })
                .collect();
            println!("{}", serde_json::json!({"valid": false, "errors": list}));
            ExitCode::from(2)
        }
    }
}
