//! `pgconvoy demo`: on a throwaway local cluster ([`crate::demo`]), `upgrade --all` with
//! the example patches, then `status`, as a new user would type them.

use crate::config::{Config, Overrides};
use crate::demo::DemoCluster;
use crate::error::Error;
use crate::output::{self, ReportFormat};
use crate::progress::ProgressMode;
use crate::upgrade::plan::Selection;

use super::args::DemoArgs;
use super::{load_patches, runtime, Invocation};

pub fn demo(args: &DemoArgs) -> Result<(), Error> {
    let demo = DemoCluster::start(args.port_base)?;
    let config_path = demo.config_path().display().to_string();
    let config = Config::load(demo.config_path(), &Overrides::default())?;
    let set = load_patches(&config)?;

    eprintln!("demo: $ pgconvoy -c {config_path} upgrade --all");
    let all = Selection {
        all: true,
        ..Selection::default()
    };
    let inv = Invocation::new("upgrade", false, None);
    let run = super::upgrade::Run {
        selection: all,
        wait: false,
        nodes: Vec::new(),
        format: ReportFormat::Text,
        progress: ProgressMode::Auto,
    };
    super::upgrade::upgrade(&config, &set, &run, &inv)?;

    let status = runtime().block_on(crate::status::status(&config, &set));
    output::to_stdout(|out| {
        writeln!(out, "\n$ pgconvoy -c {config_path} status")?;
        super::status::render_text(&status, out)
    })
    .map_err(Error::Output)?;

    if args.keep {
        demo.keep_running()?;
    }
    demo.stop();
    Ok(())
}
