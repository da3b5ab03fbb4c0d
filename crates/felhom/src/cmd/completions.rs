//! `felhom completions SHELL` and `felhom man`: generated from the clap definition itself
//! (clap_complete, clap_mangen), so they cannot drift from the real arguments. What they
//! print is a shell script or a roff page whatever `--output` says; only `man --dir`, which
//! writes files, reports in JSON when asked.

use std::path::PathBuf;

use clap::{Args, CommandFactory};

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, outln, OutputFormat};

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write one page per command and subcommand (felhom.1, felhom-golden-build.1, …) into
    /// this directory instead of printing felhom.1 on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Result<(), CliError> {
    let mut cmd = crate::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "felhom", &mut buf);
    output::write_stdout_bytes(&buf);
    Ok(())
}

/// felhom.1, the top-level page (its SUBCOMMANDS section names every command).
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(crate::Cli::command()).render(&mut buf)?;
    Ok(buf)
}

pub fn man(args: ManArgs, ctx: &Ctx) -> Result<(), CliError> {
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| CliError::bad_input(format!("create {}: {e}", dir.display())))?;
            clap_mangen::generate_to(crate::Cli::command(), &dir).map_err(|e| {
                CliError::failed(format!("write man pages to {}: {e}", dir.display()))
            })?;
            match ctx.format {
                OutputFormat::Json => output::json_line(&serde_json::json!({ "man_dir": dir })),
                OutputFormat::Human => outln!("man pages written to {}", dir.display()),
            }
        }
        None => {
            let page =
                man_page().map_err(|e| CliError::failed(format!("render the man page: {e}")))?;
            output::write_stdout_bytes(&page);
        }
    }
    Ok(())
}
