//! `pgconvoy demo`: on a throwaway local cluster ([`crate::demo`]), `upgrade --all` with
//! the example patches, then `status`, as a new user would type them.

use crate::config::{Config, Overrides};
use crate::demo::DemoCluster;
use crate::error::Error;
use crate::output::{self, ReportFormat};
use crate::upgrade::plan::Selection;

use super::{load_patches, runtime};

pub fn demo(keep: bool) -> Result<(), Error> {
    let demo = DemoCluster::start()?;
    let config_path = demo.config_path().display().to_string();
    let config = Config::load(demo.config_path(), &Overrides::default())?;
    let set = load_patches(&config)?;

    eprintln!("demo: $ pgconvoy -c {config_path} upgrade --all");
    let all = Selection {
        all: true,
        ..Selection::default()
    };
    super::upgrade::upgrade(&config, &set, &all, false, Vec::new(), ReportFormat::Text)?;

    let status = runtime().block_on(crate::status::status(&config, &set));
    output::to_stdout(|out| {
        writeln!(out, "\n$ pgconvoy -c {config_path} status")?;
        super::status::render_text(&status, out)
    })
    .map_err(Error::Output)?;

    if keep {
        demo.keep_running()?;
    }
    demo.stop();
    Ok(())
}
